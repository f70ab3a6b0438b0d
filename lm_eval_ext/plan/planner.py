"""PURE: choose the parallel layout from the model's size and the hardware, with the reasons.

``plan(model, hardware, request) -> Plan``; no torch, no environment: hardware arrives as data.

Policy (memory arithmetic only, never size classes)
---------------------------------------------------
*Headroom.* Every GPU keeps ``headroom = 1 GiB runtime + activation_tokens x (activations + KV)``
free beside the weights; activations per token are float32 logits and log-softmax over the vocabulary
plus ~12 hidden vectors (:func:`lm_eval_ext.plan.token_bytes.bytes_per_token`). What is left is the GPU's
``usable`` bytes for weights, unless the user capped it with ``max_memory_per_gpu``.

*transformers (hf).* A replica must hold the whole model. The planner takes the smallest slice
size ``k`` (1..GPUs per node) such that every contiguous slice of ``k`` GPUs has
``sum(usable) >= weights``; each process owns one slice, so a node runs ``GPUs // k`` replicas.
``k == 1`` gives ``single`` / ``data_parallel``; ``k > 1`` gives ``model_split`` (one replica) or
``hybrid`` (several). If no slice of the node holds the weights, the rest goes to CPU RAM
(``cpu_offload``, slow, warned) when RAM holds it; otherwise the plan fails with the smallest
change that fits (more GPUs, a smaller dtype, offload). A given ``num_processes`` fixes the
replica count; more processes than slices is refused.

*vLLM.* See :mod:`lm_eval_ext.plan.vllm_policy`: the smallest valid tensor-parallel size whose KV cache
holds the context, data parallel over the remaining GPUs, pipeline stages across nodes only when
one node cannot hold the model. *auto* picks hf when one GPU holds a replica (data parallel scales
as well as vLLM's and scores exactly as stock ``hf``), vLLM when the model must be split (tensor
parallel keeps all GPUs busy; a device_map runs them one after another).

Worked example: Qwen2.5-14B in bfloat16 on 2 x 24 GiB
-----------------------------------------------------
weights = 14.77e9 params x 2 B = 27.5 GiB. Per token in flight: KV 196,608 B + logits
8 x 152,064 = 1,216,512 B + hidden 12 x 5,120 x 2 = 122,880 B = 1,536,000 B; x 4,096 tokens = 5.9 GiB,
+ 1 GiB runtime = 6.9 GiB headroom, so usable = 24 - 6.9 = 17.1 GiB per card. k=1: 17.1 < 27.5, no;
k=2: 34.3 >= 27.5, yes -> ``model_split`` over both cards with max_memory 17.1 GiB each; data
parallel is impossible because each replica would need the whole 27.5 GiB. Llama-2-7B in float16
(12.6 GiB + 4.3 GiB headroom) on 4 x 24 GiB fits one card: ``data_parallel`` with 4 replicas.
"""

from __future__ import annotations

from dataclasses import replace

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.facts import ModelFacts
from lm_eval_ext.plan.hardware import Hardware
from lm_eval_ext.plan.no_fit import no_fit_error
from lm_eval_ext.plan.types import (
    BACKENDS, CPU_RAM_FRACTION, HF_STRATEGIES, VLLM_STRATEGIES, Plan, PlanRequest, Strategy, Unfit,
    describe_model, hf_headroom_bytes,
)
from lm_eval_ext.plan.vllm_policy import plan_vllm
from lm_eval_ext.units import format_bytes as fmt


def plan(model: ModelFacts, hardware: Hardware, request: PlanRequest) -> Plan:
    check_request(request, hardware)
    if request.backend == "auto":
        return _plan_auto(model, hardware, request)
    return _run_policy(plan_vllm if request.backend == "vllm" else plan_hf, model, hardware, request)


def _run_policy(policy, model: ModelFacts, hardware: Hardware, request: PlanRequest) -> Plan:
    """One backend's policy; its :class:`Unfit` becomes the full error with suggestions."""
    try:
        return policy(model, hardware, request)
    except Unfit as unfit:
        raise no_fit_error(model, hardware, request, what=unfit.what, replan=plan) from None


def check_request(request: PlanRequest, hardware: Hardware) -> None:
    if request.backend not in BACKENDS:
        raise UserError(f"backend={request.backend!r} is not valid; use one of: {', '.join(BACKENDS)}")
    allowed = {"hf": HF_STRATEGIES, "vllm": VLLM_STRATEGIES, "auto": ()}[request.backend]
    if request.strategy != "auto" and request.strategy not in allowed:
        raise UserError(f"strategy={request.strategy!r} is not a {request.backend} strategy; "
                        f"use auto or one of: {', '.join(allowed) or '(set --backend first)'}")
    procs = request.num_processes
    if procs is not None and (procs < 1 or procs % hardware.num_nodes):
        raise UserError(f"num_processes={procs} must be a positive multiple of the node count "
                        f"({hardware.num_nodes}), one share per node")
    if request.activation_tokens < 1:
        raise UserError(f"activation_tokens={request.activation_tokens} must be at least 1")
    util = request.gpu_memory_utilization
    if util is not None and not 0 < util <= 1:
        raise UserError(f"gpu_memory_utilization={util} must be in (0, 1], e.g. 0.9")


# ---------------------------------------------------------------- transformers backend

def plan_hf(model: ModelFacts, hardware: Hardware, request: PlanRequest) -> Plan:
    if request.strategy in ("data_parallel", "hybrid") and request.num_processes == 1:
        raise UserError(f"strategy={request.strategy} needs several processes, but one was started; "
                        "launch with `accelerate launch --num_processes N -m lm_eval ...` (or strategy=auto)")
    if not hardware.gpus:
        return _hf_on_cpu(model, hardware, request)
    headroom = hf_headroom_bytes(model, request.activation_tokens)
    usable = usable_per_gpu(hardware, headroom, request)
    strategy = request.strategy
    if strategy == "cpu_offload":
        return _hf_offload(model, hardware, request, usable, headroom, forced=True)
    if strategy == "model_split":
        slice_size = hardware.num_gpus_per_node
    elif strategy == "hybrid":
        slice_size = _hybrid_slice(model, hardware, request, usable)
    else:
        slice_size = smallest_slice(model.weights_bytes, usable)
    if slice_size is None or not _slices_fit(model.weights_bytes, usable, slice_size):
        if strategy == "auto" and request.allow_offload and _offload_fits(model, hardware, request, usable):
            return _hf_offload(model, hardware, request, usable, headroom, forced=False)
        raise Unfit(_what(strategy, slice_size, hardware))
    if strategy in ("single", "data_parallel") and slice_size > 1:
        raise UserError(f"strategy={strategy} needs one GPU to hold the whole model, but "
                        f"{fmt(model.weights_bytes)} of weights exceed the {fmt(max(usable))} a GPU has "
                        f"for weights; use strategy=model_split (or auto)")
    return _hf_gpu_plan(model, hardware, request, usable, headroom, slice_size)


def _what(strategy: str, slice_size: int | None, hardware: Hardware) -> str:
    if strategy in ("auto", "single", "data_parallel"):
        return f"no slice of up to {hardware.num_gpus_per_node} GPU(s) of one node holds a replica"
    return f"strategy={strategy} with {slice_size} GPU(s) per replica does not hold the model"


def usable_per_gpu(hardware: Hardware, headroom_bytes: int, request: PlanRequest) -> tuple[int, ...]:
    """Bytes each GPU (of one node) may take for weights: free minus headroom, or the user's cap."""
    usable = []
    for gpu in hardware.gpus:
        room = max(0, gpu.free_bytes - headroom_bytes)
        if request.max_memory_per_gpu_bytes is not None:
            room = min(request.max_memory_per_gpu_bytes, gpu.free_bytes)
        usable.append(room)
    return tuple(usable)


def smallest_slice(weights_bytes: int, usable: tuple[int, ...]) -> int | None:
    """Smallest k such that every contiguous slice of k GPUs holds the weights."""
    for size in range(1, len(usable) + 1):
        if _slices_fit(weights_bytes, usable, size):
            return size
    return None


def _slices_fit(weights_bytes: int, usable: tuple[int, ...], size: int) -> bool:
    if size < 1 or size > len(usable):
        return False
    return all(sum(usable[j * size:(j + 1) * size]) >= weights_bytes for j in range(len(usable) // size))


def _hybrid_slice(model: ModelFacts, hardware: Hardware, request: PlanRequest,
                  usable: tuple[int, ...]) -> int | None:
    """Explicit hybrid: the processes per node fix the slice; without them, the smallest k >= 2."""
    if request.num_processes is not None:
        per_node = request.num_processes // hardware.num_nodes
        return hardware.num_gpus_per_node // per_node if per_node else None
    smallest = smallest_slice(model.weights_bytes, usable) or hardware.num_gpus_per_node
    return max(2, smallest) if hardware.num_gpus_per_node >= 2 else None


def _num_processes_per_node(hardware: Hardware, request: PlanRequest, slice_size: int) -> int:
    if request.strategy == "single":
        if (request.num_processes or 1) > 1 or hardware.num_nodes > 1:
            raise UserError("strategy=single runs one process on one GPU; for several processes or nodes "
                            "use strategy=data_parallel (or auto)")
        return 1
    slices = hardware.num_gpus_per_node // slice_size
    if request.num_processes is None:
        return slices
    per_node = request.num_processes // hardware.num_nodes
    if per_node > slices:
        raise UserError(
            f"num_processes={request.num_processes} is more than the GPUs allow: each replica needs "
            f"{slice_size} GPU(s) and a node has {hardware.num_gpus_per_node}, so use at most "
            f"{slices * hardware.num_nodes} process(es)")
    return per_node


def _hf_gpu_plan(model: ModelFacts, hardware: Hardware, request: PlanRequest,
                 usable: tuple[int, ...], headroom: int, slice_size: int) -> Plan:
    per_node = _num_processes_per_node(hardware, request, slice_size)
    replicas = per_node * hardware.num_nodes
    strategy = {(True, True): Strategy.SINGLE, (True, False): Strategy.DATA_PARALLEL,
                (False, True): Strategy.MODEL_SPLIT, (False, False): Strategy.HYBRID}[
        (slice_size == 1, replicas == 1)]
    card = hardware.gpus[0]
    reasons = [describe_model(model),
               f"Each GPU keeps {fmt(headroom)} free for activations and the batch's KV cache "
               f"({request.activation_tokens} tokens in flight), leaving {fmt(usable[0])} for weights "
               f"on a {fmt(card.total_bytes)} card."]
    if slice_size == 1:
        reasons.append(f"One GPU holds a whole replica, so each process gets its own GPU: "
                       f"{replicas} replica(s).")
    else:
        reasons.append(f"A replica needs {slice_size} GPUs ({fmt(model.weights_bytes)} > "
                       f"{fmt(sum(usable[:slice_size - 1]))} on {slice_size - 1}), so a device_map splits "
                       f"it over {slice_size} GPUs; data parallel over single GPUs is impossible.")
    if replicas > 1:
        reasons.append(f"Launch {replicas} processes ({per_node} per node), each owning a contiguous "
                       f"slice of {slice_size} GPU(s).")
    idle = hardware.num_gpus_per_node - per_node * slice_size
    warnings = [f"{idle} GPU(s) per node stay idle with {per_node} process(es) per node; launch "
                f"{hardware.num_gpus_per_node // slice_size * hardware.num_nodes} processes to use them"] if idle else []
    return Plan(backend="hf", strategy=strategy, device="cuda", dtype=model.dtype, num_replicas=replicas,
                gpus_per_replica=slice_size, num_processes=replicas,
                weights_bytes=model.weights_bytes, kv_bytes_per_token=model.kv_bytes_per_token,
                headroom_bytes=headroom, data_parallel_size=replicas,
                max_memory_per_gpu_bytes=usable[:slice_size] if slice_size > 1 else (),
                reasons=tuple(reasons), warnings=tuple(warnings))


def _ram_budget(hardware: Hardware, request: PlanRequest) -> int:
    if request.max_cpu_memory_bytes is not None:
        return request.max_cpu_memory_bytes
    return int(hardware.cpu_ram_bytes * CPU_RAM_FRACTION)


def _offload_fits(model: ModelFacts, hardware: Hardware, request: PlanRequest, usable: tuple[int, ...]) -> bool:
    return model.weights_bytes <= sum(usable) + _ram_budget(hardware, request)


def _hf_offload(model: ModelFacts, hardware: Hardware, request: PlanRequest, usable: tuple[int, ...],
                headroom: int, *, forced: bool) -> Plan:
    if request.num_processes not in (None, hardware.num_nodes):
        raise UserError(f"cpu_offload runs one process per node ({hardware.num_nodes} in all), "
                        f"not num_processes={request.num_processes}; every process would need its own RAM copy")
    ram = _ram_budget(hardware, request)
    offloaded = max(0, model.weights_bytes - sum(usable))
    reasons = [describe_model(model)]
    warnings = []
    if forced:
        reasons.append("strategy=cpu_offload was asked for: GPUs take what fits, CPU RAM the rest.")
    else:
        reasons.append(f"The GPUs of a node hold {fmt(sum(usable))} of weights after headroom, less than "
                       f"{fmt(model.weights_bytes)}; CPU RAM takes the remaining {fmt(offloaded)}.")
    warnings.append("cpu_offload is slow: offloaded layers cross PCIe at every forward pass; "
                    "more or larger GPUs, or a smaller dtype, avoid it")
    if offloaded > ram:
        warnings.append(f"{fmt(offloaded - ram)} exceed the CPU RAM budget and go to disk (offload_folder)")
    return Plan(backend="hf", strategy=Strategy.CPU_OFFLOAD, device="cuda", dtype=model.dtype,
                num_replicas=hardware.num_nodes, gpus_per_replica=hardware.num_gpus_per_node,
                num_processes=hardware.num_nodes, weights_bytes=model.weights_bytes,
                kv_bytes_per_token=model.kv_bytes_per_token, headroom_bytes=headroom,
                data_parallel_size=hardware.num_nodes, max_memory_per_gpu_bytes=usable,
                cpu_offload_bytes=min(offloaded, ram), max_cpu_memory_bytes=ram,
                reasons=tuple(reasons), warnings=tuple(warnings))


def _hf_on_cpu(model: ModelFacts, hardware: Hardware, request: PlanRequest) -> Plan:
    """No GPU: every process holds a replica in RAM; explicit cpu_offload spills layers to disk."""
    if request.strategy in ("model_split", "hybrid"):
        raise UserError(f"strategy={request.strategy} splits a model over GPUs, and none is visible; "
                        "on CPU use strategy=cpu_offload (RAM, then disk) or auto")
    headroom = hf_headroom_bytes(model, request.activation_tokens)
    ram = _ram_budget(hardware, request)
    reasons = [describe_model(model), f"No GPU: the model runs on CPU with {fmt(ram)} of RAM to use."]
    common = dict(backend="hf", device="cpu", dtype=model.dtype, weights_bytes=model.weights_bytes,
                  kv_bytes_per_token=model.kv_bytes_per_token, headroom_bytes=headroom, gpus_per_replica=0)
    if request.strategy == "cpu_offload":
        on_disk = max(0, model.weights_bytes - ram)
        return Plan(strategy=Strategy.CPU_OFFLOAD, num_replicas=1, num_processes=1,
                    cpu_offload_bytes=min(model.weights_bytes, ram), max_cpu_memory_bytes=ram,
                    reasons=tuple(reasons + [f"strategy=cpu_offload: RAM takes up to {fmt(ram)} of weights, "
                                             f"disk (offload_folder) the remaining {fmt(on_disk)}."]),
                    warnings=("disk offload reads offloaded layers from disk at every forward pass",)
                    if on_disk else (), **common)
    procs = request.num_processes or 1
    per_replica = model.weights_bytes + headroom
    if procs * per_replica > ram:
        fits = ram // per_replica
        if procs > 1 and fits >= 1:
            raise UserError(f"num_processes={procs} replicas of {fmt(per_replica)} exceed {fmt(ram)} of RAM; "
                            f"use at most {fits} process(es)")
        raise Unfit("CPU RAM cannot hold one replica")
    if request.strategy == "single" and procs > 1:
        raise UserError(f"strategy=single runs one process, not num_processes={procs}; use data_parallel")
    strategy = Strategy.SINGLE if procs == 1 else Strategy.DATA_PARALLEL
    reasons.append(f"{procs} replica(s) of {fmt(per_replica)} (weights + headroom) fit in RAM.")
    return Plan(strategy=strategy, num_replicas=procs, num_processes=procs, data_parallel_size=procs,
                reasons=tuple(reasons), **common)


# ---------------------------------------------------------------- backend=auto

def _try(planner, *args) -> Plan | UserError:
    try:
        return _run_policy(planner, *args)
    except UserError as exc:
        return exc


def _plan_auto(model: ModelFacts, hardware: Hardware, request: PlanRequest) -> Plan:
    hf = _try(plan_hf, model, hardware, replace(request, backend="hf"))
    if not request.vllm_available or not hardware.gpus:
        why = "vLLM is not installed" if hardware.gpus else "there is no GPU for vLLM"
        return _recommend(hf, f"backend=auto chose hf because {why}.")
    vllm = _try(plan_vllm, model, hardware, replace(request, backend="vllm", strategy="auto"))
    if isinstance(hf, UserError) and isinstance(vllm, UserError):
        raise vllm
    if isinstance(vllm, UserError):
        return _recommend(hf, f"backend=auto chose hf: vLLM cannot run it here ({vllm}).")
    if isinstance(hf, UserError):
        return _recommend(vllm, "backend=auto chose vllm: the transformers backend cannot hold it here.")
    if hf.strategy in (Strategy.SINGLE, Strategy.DATA_PARALLEL):
        return _recommend(hf, "backend=auto chose hf: one GPU holds a replica, so data parallel scales "
                              "like vLLM's and scores match stock hf exactly.")
    return _recommend(vllm, f"backend=auto chose vllm: hf would need {hf.strategy.value}, which runs the "
                            "GPUs of a replica one after another; tensor parallel keeps them all busy.")


def _recommend(chosen: Plan | UserError, sentence: str) -> Plan:
    if isinstance(chosen, UserError):
        raise chosen
    return replace(chosen, reasons=chosen.reasons + (sentence,))
