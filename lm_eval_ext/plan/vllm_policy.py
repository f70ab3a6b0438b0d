"""PURE: the vLLM side of the planner (tensor, data and pipeline parallel sizes, context length).

Policy. vLLM takes ``gpu_memory_utilization x total`` of each GPU (lowered when another process
already holds memory, since vLLM refuses to start otherwise). Out of that come the weights shard
``weights / (tp x pp)``, a reserve for runtime and activations, and the paged KV cache, whose cost
per token on one GPU is ``2 x layers/pp x max(1, kv_heads/tp) x head_dim x bytes`` (with fewer KV
heads than ranks, vLLM replicates them). A tensor-parallel size is valid when it divides the
attention heads, divides or is a multiple of the KV heads, and fits the GPUs of one node.

1. The smallest valid ``tp`` whose KV cache holds the whole context (``max_model_len``, default the
   model's window) wins; data parallel fills the remaining GPUs with copies (``GPUs // tp`` per node).
2. If no ``tp`` holds the whole window and the user did not fix ``max_model_len``, the largest valid
   ``tp`` is used with the context cut to what its KV cache holds (never below ``min_model_len``).
3. Only when one node cannot hold the model at all are pipeline stages added across nodes
   (``pipeline_parallel_size``, run by vLLM's Ray backend), again with the smallest ``tp``.

Example: Llama-3-70B (131 GiB bf16, 80 layers, 8 KV heads, 8,192-token window) on 8 x 80 GiB. At
0.9 a card gives 72 GiB, 5.7 GiB of it reserved. tp=1 cannot hold the weights; tp=2 holds 65.7 GiB
of weights but leaves KV room for only ~4,100 tokens at 160 KiB per token per GPU; tp=4 holds
32.9 GiB of weights and KV for ~439,000 tokens at 80 KiB per token, so tensor_parallel 4 with data
parallel 2 (and the full 8,192-token window).
"""

from __future__ import annotations

from dataclasses import dataclass

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.hardware import Hardware
from lm_eval_ext.plan.facts import DTYPE_BYTES, ModelFacts
from lm_eval_ext.plan.types import (
    CPU_RAM_FRACTION, DEFAULT_GPU_MEMORY_UTILIZATION, MODEL_LEN_STEP_TOKENS, Plan, PlanRequest,
    Strategy, Unfit, ceil_div, describe_model, vllm_reserve_bytes,
)
from lm_eval_ext.units import format_bytes as fmt


@dataclass(frozen=True)
class _Layout:
    tp: int
    pp: int
    max_model_len: int


def valid_tp_sizes(model: ModelFacts, max_size: int) -> list[int]:
    return [t for t in range(1, max_size + 1) if model.num_attention_heads % t == 0
            and (model.num_kv_heads % t == 0 or t % model.num_kv_heads == 0)]


def check_tp_size(model: ModelFacts, tp: int, gpus_per_node: int, device: str = "GPU") -> None:
    """The one tensor-parallel rule (GPUs, and CPU core groups with ``device="CPU core"``)."""
    choices = ", ".join(map(str, valid_tp_sizes(model, max(gpus_per_node, 1)))) or "1"
    if tp < 1 or model.num_attention_heads % tp:
        raise UserError(f"tensor_parallel_size={tp} must divide num_attention_heads="
                        f"{model.num_attention_heads}; use {choices}")
    if model.num_kv_heads % tp and tp % model.num_kv_heads:
        raise UserError(f"tensor_parallel_size={tp} must divide num_key_value_heads={model.num_kv_heads} "
                        f"or be a multiple of it; use {choices}")
    if tp > gpus_per_node:
        raise UserError(f"tensor_parallel_size={tp} exceeds the {gpus_per_node} {device}(s) of a node; tensor "
                        f"parallel stays inside a node, use pipeline_parallel_size across nodes; use {choices}")


def kv_bytes_per_token_per_gpu(model: ModelFacts, tp: int, pp: int) -> int:
    heads_per_gpu = max(1, model.num_kv_heads // tp)
    layers_per_stage = ceil_div(model.num_layers, pp)
    return 2 * layers_per_stage * heads_per_gpu * model.head_dim * DTYPE_BYTES[model.dtype]


def kv_capacity_tokens(model: ModelFacts, budget_bytes: int, reserve_bytes: int, tp: int, pp: int) -> int:
    free_for_kv = budget_bytes - reserve_bytes - ceil_div(model.weights_bytes, tp * pp)
    return max(0, free_for_kv // kv_bytes_per_token_per_gpu(model, tp, pp))


def _utilization(hardware: Hardware, request: PlanRequest) -> tuple[float, list[str]]:
    wanted = request.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
    free_share = min(g.free_bytes / g.total_bytes for g in hardware.gpus)
    if free_share >= wanted:
        return wanted, []
    lowered = int((free_share - 0.01) * 100) / 100
    if request.gpu_memory_utilization is not None or lowered <= 0.05:
        raise UserError(f"gpu_memory_utilization={wanted} needs {wanted:.0%} of each GPU free, but only "
                        f"{free_share:.0%} is; free the GPUs or use gpu_memory_utilization={max(lowered, 0.01)}")
    return lowered, [f"gpu_memory_utilization lowered to {lowered} because only {free_share:.0%} "
                     "of a GPU is free (vLLM refuses to start above the free share)"]


def _search(model: ModelFacts, budget: int, reserve: int, tps: list[int], pps: list[int],
            target_len: int, min_len: int, num_gpus: int) -> _Layout | None:
    for pp in pps:
        tps = [t for t in tps if t * pp <= num_gpus]
        for tp in tps:
            if kv_capacity_tokens(model, budget, reserve, tp, pp) >= target_len:
                return _Layout(tp, pp, target_len)
        best = max(tps, default=None)
        if best is not None:
            capacity = kv_capacity_tokens(model, budget, reserve, best, pp)
            cut = capacity // MODEL_LEN_STEP_TOKENS * MODEL_LEN_STEP_TOKENS
            if cut >= min_len:
                return _Layout(best, pp, cut)
    return None


def _choices(model: ModelFacts, hardware: Hardware, request: PlanRequest) -> tuple[list[int], list[int]]:
    """Candidate (tp, pp) sizes after the user's explicit sizes and strategy."""
    n, nodes = hardware.num_gpus_per_node, hardware.num_nodes
    if request.tensor_parallel_size is not None:
        check_tp_size(model, request.tensor_parallel_size, n)
    tps = [request.tensor_parallel_size] if request.tensor_parallel_size else valid_tp_sizes(model, n)
    pps = [request.pipeline_parallel_size] if request.pipeline_parallel_size else list(range(1, nodes + 1))
    strategy = request.strategy
    if strategy in ("single", "data_parallel"):
        tps, pps = [t for t in tps if t == 1], [p for p in pps if p == 1]
    elif strategy in ("tensor_parallel", "tensor_data_parallel"):
        tps, pps = [t for t in tps if t > 1], [p for p in pps if p == 1]
    elif strategy == "pipeline_parallel":
        # across nodes one stage per node; on one node the stages share its GPUs
        pps = [p for p in pps if p > 1] or ([n] if nodes == 1 and n > 1 else [])
    if any(p > model.num_layers for p in pps):
        raise UserError(f"pipeline_parallel_size={max(pps)} exceeds the {model.num_layers} layers; use fewer stages")
    return tps, pps


def _target_len(model: ModelFacts, request: PlanRequest) -> tuple[int, int]:
    window = model.max_position_embeddings
    if request.max_model_len is not None:
        if request.max_model_len > window:
            raise UserError(f"max_model_len={request.max_model_len} exceeds the model's window of "
                            f"{window} tokens (max_position_embeddings); use at most {window}")
        return request.max_model_len, request.max_model_len
    return window, min(request.min_model_len, window)


def plan_vllm(model: ModelFacts, hardware: Hardware, request: PlanRequest) -> Plan:
    if not hardware.gpus:
        return _vllm_on_cpu(model, hardware, request)
    util, warnings = _utilization(hardware, request)
    budget = int(min(g.total_bytes for g in hardware.gpus) * util)
    reserve = vllm_reserve_bytes(model, request.activation_tokens)
    target_len, min_len = _target_len(model, request)
    tps, pps = _choices(model, hardware, request)
    layout = _search(model, budget, reserve, tps, pps, target_len, min_len, hardware.num_gpus)
    if layout is None:
        raise Unfit(f"no valid tensor/pipeline parallel size holds the weights and {min_len} tokens of KV cache")
    dp = _data_parallel_size(hardware, request, layout)
    return _build_plan(model, hardware, request, layout, dp, util, reserve, warnings)


def _data_parallel_size(hardware: Hardware, request: PlanRequest, layout: _Layout) -> int:
    most = (hardware.num_gpus_per_node * hardware.num_nodes) // (layout.tp * layout.pp)
    if request.strategy in ("single", "tensor_parallel", "pipeline_parallel"):
        most = 1
    wanted = request.data_parallel_size
    if wanted is None:
        return most
    if wanted > most:
        raise UserError(f"data_parallel_size={wanted} needs {wanted * layout.tp * layout.pp} GPUs "
                        f"(tensor {layout.tp} x pipeline {layout.pp} each), but {hardware.num_gpus} are there; "
                        f"use data_parallel_size<={most}")
    return wanted


def _strategy(tp: int, dp: int, pp: int) -> Strategy:
    if pp > 1:
        return Strategy.PIPELINE_PARALLEL
    if tp > 1:
        return Strategy.TENSOR_DATA_PARALLEL if dp > 1 else Strategy.TENSOR_PARALLEL
    return Strategy.DATA_PARALLEL if dp > 1 else Strategy.SINGLE


def _build_plan(model: ModelFacts, hardware: Hardware, request: PlanRequest, layout: _Layout, dp: int,
                util: float, reserve: int, warnings: list[str]) -> Plan:
    tp, pp = layout.tp, layout.pp
    per_gpu = ceil_div(model.weights_bytes, tp * pp)
    kv_gpu = kv_bytes_per_token_per_gpu(model, tp, pp)
    reasons = [describe_model(model),
               f"vLLM may use {util:.0%} of a {fmt(min(g.total_bytes for g in hardware.gpus))} GPU; "
               f"{fmt(reserve)} of it is kept for runtime and activations.",
               f"tensor_parallel_size={tp} x pipeline_parallel_size={pp} puts {fmt(per_gpu)} of weights and "
               f"{kv_gpu:,} bytes of KV per token on each GPU"
               + ("." if request.tensor_parallel_size else "; smaller valid sizes leave no room for the context.")
               if tp * pp > 1 else f"One GPU holds the weights ({fmt(per_gpu)}) and the KV cache."]
    if layout.max_model_len < model.max_position_embeddings and request.max_model_len is None:
        reasons.append(f"max_model_len is cut from {model.max_position_embeddings} to {layout.max_model_len} "
                       "tokens so that one full-length sequence fits the KV cache.")
    if dp > 1:
        reasons.append(f"data_parallel_size={dp}: one copy per {tp * pp} GPU(s).")
    if pp > 1:
        reasons.append(f"One node cannot hold the model, so {pp} pipeline stages span nodes "
                       "(vLLM's Ray backend runs them; start a Ray cluster over the nodes first).")
    return Plan(backend="vllm", strategy=_strategy(tp, dp, pp), device="cuda", dtype=model.dtype,
                num_replicas=dp, gpus_per_replica=tp * pp, num_processes=1,
                weights_bytes=model.weights_bytes, kv_bytes_per_token=model.kv_bytes_per_token,
                headroom_bytes=reserve, tensor_parallel_size=tp, data_parallel_size=dp,
                pipeline_parallel_size=pp, max_model_len=layout.max_model_len,
                gpu_memory_utilization=util, reasons=tuple(reasons), warnings=tuple(warnings))


def _vllm_on_cpu(model: ModelFacts, hardware: Hardware, request: PlanRequest) -> Plan:
    """vLLM's CPU build: ranks are core groups (``VLLM_CPU_OMP_THREADS_BIND``), one core at least
    each, and the KV cache lives in RAM (``VLLM_CPU_KVCACHE_SPACE``). ``auto`` is one engine with
    tensor parallel 1 (all cores serve it); explicit sizes obey the same head rules as on GPUs."""
    cores = max(hardware.num_cpu_cores, 1)
    tp, pp = request.tensor_parallel_size or 1, request.pipeline_parallel_size or 1
    check_tp_size(model, tp, cores, device="CPU core")
    dp = request.data_parallel_size or 1
    if pp > model.num_layers:
        raise UserError(f"pipeline_parallel_size={pp} exceeds the {model.num_layers} layers; use fewer stages")
    if tp * pp * dp > cores:
        raise UserError(f"tensor_parallel_size={tp} x pipeline_parallel_size={pp} x data_parallel_size={dp} "
                        f"needs {tp * pp * dp} CPU cores (one per rank) but {cores} are available; lower one of them")
    strategy = _strategy(tp, dp, pp)
    if request.strategy not in ("auto", strategy.value):
        raise UserError(f"strategy={request.strategy} does not match the sizes given on CPU ({strategy.value}); "
                        "use strategy=auto and set tensor_parallel_size/data_parallel_size instead")
    ram = int(hardware.cpu_ram_bytes * CPU_RAM_FRACTION)
    target_len, _ = _target_len(model, request)
    if dp * model.weights_bytes + target_len * model.kv_bytes_per_token > ram:
        raise Unfit("CPU RAM cannot hold the weights and one context")
    reasons = (describe_model(model), f"No GPU: vLLM's CPU backend holds {fmt(model.weights_bytes)} "
               f"of weights and the KV cache in {fmt(ram)} of RAM (set VLLM_CPU_KVCACHE_SPACE).",
               f"tensor_parallel_size={tp} x pipeline_parallel_size={pp} x data_parallel_size={dp} over "
               f"{cores} CPU cores" + (" (auto: one engine on all cores)." if tp * pp * dp == 1 else "."))
    return Plan(backend="vllm", strategy=strategy, device="cpu", dtype=model.dtype,
                num_replicas=dp, gpus_per_replica=0, num_processes=1, weights_bytes=model.weights_bytes,
                kv_bytes_per_token=model.kv_bytes_per_token, headroom_bytes=0, tensor_parallel_size=tp,
                data_parallel_size=dp, pipeline_parallel_size=pp, max_model_len=target_len, reasons=reasons)
