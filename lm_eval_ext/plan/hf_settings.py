"""PURE: ``hf_ext``'s settings read against the machine: the device, the dtype, the GPUs the planner
may use, and the planner request.

Explicit settings win: ``strategy=...``, ``parallelize=True`` (read as model_split),
``max_memory_per_gpu``, ``max_cpu_memory`` and a pinned ``device=cuda:N`` go into the request; a
combination that cannot work is refused with the fix instead of being silently changed.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.hardware import Hardware
from lm_eval_ext.plan.launch import Launch
from lm_eval_ext.plan.types import PlanRequest
from lm_eval_ext.units import parse_bytes

logger = logging.getLogger(__name__)

#: what lm-eval's CLI passes as ``device`` when the user gives no ``--device`` (EvaluatorConfig)
LM_EVAL_CLI_DEFAULT_DEVICE = "cuda:0"


def check_device_kind(requested: str, *, mps_available: bool) -> None:
    """hf_ext plans for CUDA GPUs and the CPU: any other device is refused in one line instead of a
    plan that silently runs on the CPU (``--device mps`` did, with status 0)."""
    kind = requested.split(":", 1)[0].strip().lower()
    if requested == "auto" or kind in ("cuda", "cpu"):
        return
    if kind == "mps" and not mps_available:
        raise UserError(f"device={requested}: no MPS device here (torch.backends.mps.is_available() is False); "
                        "pass --device cpu, or drop --device to run on CPU")
    if kind == "mps":
        raise UserError(f"device={requested}: hf_ext plans for CUDA GPUs and the CPU only; pass --device cpu, or "
                        "use stock --model hf on MPS")
    raise UserError(f"device={requested!r} is not a device hf_ext can use; pass --device cuda (every visible GPU), "
                    "cuda:N (one GPU) or cpu, or drop --device")


def unpinned_device(requested: str, launch: Launch) -> str:
    """A ``cuda:N`` that cannot mean "only GPU N" becomes ``cuda`` (plan over every visible GPU):
    lm-eval's CLI default ``cuda:0`` (else every CLI run on several GPUs would plan for one), and
    any ``cuda:N`` under a launch of several processes, where each process takes its own GPUs
    (stock ``hf`` overrides the device there too)."""
    if requested.startswith("cuda:") and (requested == LM_EVAL_CLI_DEFAULT_DEVICE or launch.world_size > 1):
        return "cuda"
    return requested


def resolve_device(requested: str, hardware: Hardware) -> str:
    """``auto`` -> cuda when a GPU is visible, else cpu. lm-eval's default ``cuda``/``cuda:0`` without
    a visible GPU becomes cpu (the caller warns), as stock ``hf`` does: refusing it would break every
    CPU run that did not spell ``--device cpu``. Any other CUDA device (``cuda:3``) was named by the
    user: without a GPU it is an error, not a silent CPU run."""
    if requested == "auto":
        return "cuda" if hardware.gpus else "cpu"
    if requested.startswith("cuda") and not hardware.gpus:
        if requested not in ("cuda", "cuda:0"):  # not lm-eval's default: the user named this device
            raise UserError(f"device={requested}: no CUDA device is visible (torch.cuda.is_available() is False); "
                            "pass --device cpu, or drop --device to run on CPU")
        return "cpu"
    return requested


def settle_device(requested: str, hardware: Hardware) -> str:
    """:func:`unpinned_device` then :func:`resolve_device`, saying what changed and why."""
    device = unpinned_device(requested, hardware.launch)
    if device != requested and hardware.launch.world_size > 1:
        logger.warning("device=%s is not used under a launch of %d processes: each process takes the GPUs "
                       "of its own rank (as stock hf does)", requested, hardware.launch.world_size)
    elif device != requested:
        logger.info("device=%s (lm-eval's default) read as cuda: the plan may use every visible GPU; "
                    "CUDA_VISIBLE_DEVICES=0 keeps it on that one", requested)
    resolved = resolve_device(device, hardware)
    if resolved != device and requested != "auto":
        logger.warning("device=%s requested but no CUDA device is visible; using cpu", requested)
    return resolved


def resolve_dtype(requested: str, device: str, hardware: Hardware) -> str:
    """``auto``: float32 on CPU (bf16 matmuls there are slow and less exact), bfloat16 when every
    visible GPU supports it, else the checkpoint's own dtype."""
    if requested != "auto":
        return requested
    if device.startswith("cpu"):
        return "float32"
    if hardware.gpus and all(g.supports_bf16 for g in hardware.gpus):
        return "bfloat16"
    return "auto"


def visible_hardware(device: str, hardware: Hardware) -> Hardware:
    """``device=cpu`` plans without GPUs; ``device=cuda:N`` plans on that one card."""
    if device.startswith("cpu"):
        return replace(hardware, gpus=())
    if device.startswith("cuda:"):
        index = int(device.split(":", 1)[1])
        if index >= len(hardware.gpus):
            raise UserError(f"device={device} does not exist: {len(hardware.gpus)} GPU(s) are visible")
        return replace(hardware, gpus=(hardware.gpus[index],))
    return hardware


def plan_request(config: Any, hardware: Hardware) -> PlanRequest:
    """The user's hf_ext settings as a planner request; the launch fixes the process count."""
    strategy = config.strategy
    if config.parallelize and not hardware.gpus:
        raise UserError("parallelize=True splits a model over GPUs, and none is visible; drop parallelize "
                        "(hf_ext plans the CPU run itself), or pass strategy=cpu_offload to spill weights to disk")
    if config.parallelize and strategy == "auto":
        strategy = "hybrid" if hardware.launch.world_size > 1 else "model_split"
    cap = config.max_memory_per_gpu
    ram = config.max_cpu_memory
    return PlanRequest(
        backend="hf", strategy=strategy, num_processes=hardware.launch.world_size,
        max_memory_per_gpu_bytes=parse_bytes(cap, what="max_memory_per_gpu") if cap else None,
        max_cpu_memory_bytes=parse_bytes(ram, what="max_cpu_memory") if ram else None,
    )
