"""EDGE: the project planner behind ``vllm_ext``'s ``planner=`` hook (``lm_eval_ext.vllm.sizes``).

``vllm_planner(config, shape, hardware_view) -> (tensor_parallel_size, data_parallel_size, reason)``
sizes the model from its config (no weights), reads the GPUs' free memory and runs
:func:`lm_eval_ext.plan.planner.plan` with ``backend="vllm"``. Explicit sizes in the config are passed
to the planner as constraints, so the ``auto`` one is chosen to fit around them; ``vllm_sizes``
still validates both. The context length and memory share the plan chose are named in the reason.
"""

from __future__ import annotations

from typing import Any

from lm_eval_ext.plan.detect import detect_hardware
from lm_eval_ext.plan.hardware import Hardware
from lm_eval_ext.plan.types import PlanRequest

AUTO = "auto"


def _explicit(value: Any) -> Any:
    return None if value == AUTO else value


def vllm_request(config: Any) -> PlanRequest:
    """The vllm_ext settings (duck-typed ``VllmExtConfig``) as a planner request."""
    max_model_len = getattr(config, "requested_max_model_len", getattr(config, "max_model_len", AUTO))
    return PlanRequest(
        backend="vllm",
        tensor_parallel_size=_explicit(config.tensor_parallel_size),
        data_parallel_size=_explicit(config.data_parallel_size),
        max_model_len=_explicit(max_model_len),
        gpu_memory_utilization=_explicit(config.gpu_memory_utilization),
    )


def vllm_planner(config: Any, shape: Any = None, hardware_view: Any = None, *,
                 hardware: Hardware | None = None) -> tuple[int, int, str]:
    from lm_eval_ext.plan.model_facts import load_model_facts
    from lm_eval_ext.plan.planner import plan

    hardware = hardware or detect_hardware()
    if not hardware.gpus:  # vLLM's CPU build: ranks are core groups, which the planner does not size
        return 1, 1, "CPU: one replica with tensor_parallel_size 1 (planner: no GPU to size)"
    facts = load_model_facts(config.pretrained, getattr(config, "dtype", AUTO) or AUTO,
                             revision=getattr(config, "revision", None),
                             trust_remote_code=getattr(config, "trust_remote_code", False))
    chosen = plan(facts, hardware, vllm_request(config))
    reason = (f"planner: {chosen.strategy.value}, tensor {chosen.tensor_parallel_size} x data "
              f"{chosen.data_parallel_size}; max_model_len {chosen.max_model_len} fits the KV cache at "
              f"gpu_memory_utilization {chosen.gpu_memory_utilization}. " + " ".join(chosen.reasons[1:]))
    return chosen.tensor_parallel_size, chosen.data_parallel_size, reason
