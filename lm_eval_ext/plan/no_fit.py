"""PURE: the "nothing fits" error, naming the smallest changes that would fit.

Each suggestion is checked by planning again with the change applied (more GPUs of the same card,
a smaller dtype, CPU offload), so the message never proposes something that would fail too.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import replace

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.hardware import Gpu, Hardware
from lm_eval_ext.plan.facts import ModelFacts, Quantization
from lm_eval_ext.plan.types import Plan, PlanRequest, hf_headroom_bytes, vllm_reserve_bytes
from lm_eval_ext.units import GiB
from lm_eval_ext.units import format_bytes as fmt

#: largest node the "more GPUs" suggestion considers (bigger nodes do not exist in practice)
MAX_GPUS_PER_NODE = 16
#: card assumed when the machine has no GPU at all
DEFAULT_SUGGESTED_GPU_BYTES = 80 * GiB

_suggesting = contextvars.ContextVar("lm_eval_ext_plan_suggesting", default=False)
#: the planner that checks each suggestion (passed in by :func:`no_fit_error`: no import cycle)
_replan: contextvars.ContextVar[Callable[[ModelFacts, Hardware, PlanRequest], Plan]] = contextvars.ContextVar("lm_eval_ext_replan")


class NoFitError(UserError):
    """No layout holds the model on this hardware; the message lists changes that would."""


def no_fit_error(model: ModelFacts, hardware: Hardware, request: PlanRequest, *, what: str,
                 replan: Callable[[ModelFacts, Hardware, PlanRequest], Plan]) -> UserError:
    """The error for ``what`` failed, with the smallest changes that ``replan`` accepts."""
    if request.backend == "vllm":
        extra = f"{fmt(vllm_reserve_bytes(model, request.activation_tokens))} of reserve per GPU and the KV cache"
    else:
        extra = f"about {fmt(hf_headroom_bytes(model, request.activation_tokens))} of headroom per GPU"
    head = (f"{model.name} does not fit {hardware.describe()} with backend={request.backend}: {what}. "
            f"It needs {fmt(model.weights_bytes)} of weights in {model.dtype} plus {extra}.")
    if _suggesting.get():  # planning a suggestion: the caller only needs to know it failed
        return NoFitError(head)
    token, replan_token = _suggesting.set(True), _replan.set(replan)
    try:
        changes = [s for s in (_more_gpus(model, hardware, request), _smaller_dtype(model, hardware, request),
                               _offload(model, hardware, request), _auto(model, hardware, request)) if s]
    finally:
        _suggesting.reset(token)
        _replan.reset(replan_token)
    if not changes:
        return NoFitError(head + f" No single change tried fits (up to {MAX_GPUS_PER_NODE} GPUs per node, "
                                 "4-bit weights, CPU offload).")
    return NoFitError(head + " Smallest changes that fit: " + "; or ".join(changes) + ".")


def _fits(model: ModelFacts, hardware: Hardware, request: PlanRequest) -> bool:
    try:
        _replan.get()(model, hardware, request)
    except UserError:
        return False
    return True


def _more_gpus(model: ModelFacts, hardware: Hardware, request: PlanRequest) -> str | None:
    card = hardware.gpus[0] if hardware.gpus else Gpu("GPU", DEFAULT_SUGGESTED_GPU_BYTES, DEFAULT_SUGGESTED_GPU_BYTES)
    relaxed = replace(request, num_processes=None, data_parallel_size=None, allow_offload=False)
    for count in range(hardware.num_gpus_per_node + 1, MAX_GPUS_PER_NODE + 1):
        bigger = replace(hardware, gpus=(card,) * count)
        if _fits(model, bigger, relaxed):
            per_node = " per node" if hardware.num_nodes > 1 else ""
            return (f"{count} GPUs of {fmt(card.total_bytes)}{per_node} (--gpus {count}x{_spelling(card)}; "
                    f"have {hardware.num_gpus_per_node})")
    if hardware.gpus and hardware.num_nodes == 1 and request.backend != "hf":
        two = replace(hardware, num_nodes=2)
        if _fits(model, two, relaxed):
            return "a second node of the same GPUs (--nodes 2, vLLM pipeline parallel)"
    return None


def _spelling(card: Gpu) -> str:
    gib = card.total_bytes / GiB
    return f"{gib:.0f}GiB" if abs(gib - round(gib)) < 0.05 else f"{card.total_bytes}"


_SMALLER = (
    ("dtype=bfloat16", "bfloat16", None),
    ("8-bit weights (load_in_8bit=True, bitsandbytes)", "bfloat16", Quantization("bitsandbytes", 8, 0)),
    ("4-bit weights (load_in_4bit=True, bitsandbytes, or a GPTQ/AWQ checkpoint)", "bfloat16",
     Quantization("bitsandbytes", 4, 64)),
)


def _smaller_dtype(model: ModelFacts, hardware: Hardware, request: PlanRequest) -> str | None:
    for label, dtype, quant in _SMALLER:
        if request.backend == "vllm" and quant is not None and quant.method == "bitsandbytes":
            label = f"{quant.bits}-bit quantized checkpoint (GPTQ/AWQ)"
        smaller = model.with_dtype(dtype, quant)
        if smaller.weights_bytes >= model.weights_bytes:
            continue
        if _fits(smaller, hardware, request):
            return f"{label}: {fmt(smaller.weights_bytes)} of weights"
    return None


def _offload(model: ModelFacts, hardware: Hardware, request: PlanRequest) -> str | None:
    if not hardware.gpus:
        offloaded = replace(request, backend="hf", strategy="cpu_offload")
        if request.backend == "hf" and request.strategy != "cpu_offload" and _fits(model, hardware, offloaded):
            return "strategy=cpu_offload (weights beyond RAM read from disk; very slow)"
        return None
    if request.strategy == "cpu_offload":
        return None
    offloaded = replace(request, backend="hf", strategy="cpu_offload", num_processes=None)
    if _fits(model, hardware, offloaded) and _offload_within_ram(model, hardware, offloaded):
        where = "" if request.backend == "hf" else "--backend hf with "
        return f"{where}strategy=cpu_offload (layers that do not fit the GPUs stay in CPU RAM; slow)"
    return None


def _offload_within_ram(model: ModelFacts, hardware: Hardware, request: PlanRequest) -> bool:
    return not any("go to disk" in w for w in _replan.get()(model, hardware, request).warnings)


def _auto(model: ModelFacts, hardware: Hardware, request: PlanRequest) -> str | None:
    if request.strategy == "auto" and request.tensor_parallel_size is None:
        return None
    relaxed = replace(request, strategy="auto", tensor_parallel_size=None, pipeline_parallel_size=None)
    return "strategy=auto (let the planner choose the sizes)" if _fits(model, hardware, relaxed) else None
