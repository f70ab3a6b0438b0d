"""PURE: tensor/data parallel sizes, context window and memory share for ``vllm_ext``.

:func:`choose_vllm_sizes` turns ``auto`` values into numbers and refuses impossible explicit ones
with the fix. It takes the model's shape and the hardware as plain data, so it is tested without
vLLM or GPUs. PLANNER HOOK: pass ``planner=`` (a callable with :data:`Planner`'s signature, e.g. a
wrapper around ``lm_eval_ext.plan.planner.plan``) to decide the ``auto`` values; explicit values always
win and are validated here either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lm_eval_ext.errors import ConfigError
from lm_eval_ext.vllm.config import AUTO, VllmExtConfig

#: Share of GPU memory used when ``gpu_memory_utilization=auto`` (vLLM's own default).
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9


@dataclass(frozen=True)
class ModelShape:
    """What decides which parallel sizes are legal; read from config.json, no weights."""

    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int | None


@dataclass(frozen=True)
class HardwareView:
    """``num_gpus`` visible to this process (0 on CPU) and the CPU cores it may use."""

    num_gpus: int
    num_cpu_cores: int


@dataclass(frozen=True)
class VllmSizes:
    tensor_parallel_size: int
    data_parallel_size: int
    max_model_len: int | None  # None: vLLM derives it from the model config
    gpu_memory_utilization: float
    reasons: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict:
        return {
            "tensor_parallel_size": self.tensor_parallel_size,
            "data_parallel_size": self.data_parallel_size,
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "reasons": list(self.reasons),
        }


#: (config, shape, hardware) -> (tensor_parallel_size, data_parallel_size, reason) for ``auto`` values.
Planner = Callable[[VllmExtConfig, ModelShape, HardwareView], tuple[int, int, str]]


def default_planner(config: VllmExtConfig, shape: ModelShape, hardware: HardwareView) -> tuple[int, int, str]:
    """Without the project planner: one replica on one device. Safe for any model that fits one
    device; splitting or replicating needs the model's memory, which the planner reads."""
    if hardware.num_gpus == 0:
        return 1, 1, "CPU: one replica with tensor_parallel_size 1 (auto)"
    return 1, 1, f"{hardware.num_gpus} GPU(s): one replica on one GPU (auto; planner not consulted)"


def legal_tensor_parallel_sizes(shape: ModelShape, limit: int) -> list[int]:
    return [size for size in range(1, max(limit, 1) + 1) if shape.num_attention_heads % size == 0]


def _check_tensor_parallel(size: int, shape: ModelShape, hardware: HardwareView) -> None:
    devices = hardware.num_gpus or hardware.num_cpu_cores
    legal = legal_tensor_parallel_sizes(shape, devices)
    choices = ", ".join(map(str, legal))
    if shape.num_attention_heads % size:
        raise ConfigError(
            f"tensor_parallel_size={size} must divide num_attention_heads={shape.num_attention_heads}; "
            f"use one of {choices} (or tensor_parallel_size=auto)"
        )
    kv_heads = shape.num_key_value_heads
    if kv_heads % size and size % kv_heads:
        raise ConfigError(
            f"tensor_parallel_size={size} and num_key_value_heads={kv_heads}: one must divide the other; "
            f"use one of {choices}"
        )


def _check_device_count(tp: int, dp: int, hardware: HardwareView) -> None:
    if hardware.num_gpus:
        if tp * dp > hardware.num_gpus:
            raise ConfigError(
                f"tensor_parallel_size={tp} x data_parallel_size={dp} needs {tp * dp} GPUs but "
                f"{hardware.num_gpus} are visible; lower one of them or set CUDA_VISIBLE_DEVICES"
            )
    elif tp * dp > hardware.num_cpu_cores:
        raise ConfigError(
            f"tensor_parallel_size={tp} x data_parallel_size={dp} needs {tp * dp} CPU cores (one per "
            f"rank) but {hardware.num_cpu_cores} are available; lower one of them"
        )


def _choose_max_model_len(config: VllmExtConfig, shape: ModelShape) -> tuple[int | None, str]:
    requested = config.requested_max_model_len
    if requested == AUTO:
        return None, "max_model_len from the model config (auto)"
    limit = shape.max_position_embeddings
    if limit is not None and requested > limit:
        raise ConfigError(
            f"max_model_len={requested} exceeds the model's max_position_embeddings={limit}; "
            f"use max_model_len={limit} or less (or auto)"
        )
    return requested, f"max_model_len={requested} (explicit)"


def choose_vllm_sizes(
    config: VllmExtConfig, shape: ModelShape, hardware: HardwareView, planner: Planner | None = None
) -> VllmSizes:
    """Resolve ``auto`` sizes, validate explicit ones; explicit values win over the planner.

    Example: 4 heads, 2 GPUs, ``tensor_parallel_size=auto, data_parallel_size=2`` -> the planner's
    tensor size for the auto field, 2 replicas kept as given, and 2 x TP GPUs checked against 2.
    """
    planned_tp, planned_dp, reason = (planner or default_planner)(config, shape, hardware)
    reasons = [reason]
    tp = planned_tp if config.tensor_parallel_size == AUTO else config.tensor_parallel_size
    dp = planned_dp if config.data_parallel_size == AUTO else config.data_parallel_size
    for name, value in (("tensor_parallel_size", tp), ("data_parallel_size", dp)):
        if getattr(config, name) != AUTO:
            reasons.append(f"{name}={value} (explicit)")
    _check_tensor_parallel(tp, shape, hardware)
    _check_device_count(tp, dp, hardware)
    max_model_len, len_reason = _choose_max_model_len(config, shape)
    reasons.append(len_reason)
    utilization = config.gpu_memory_utilization
    if utilization == AUTO:
        utilization = DEFAULT_GPU_MEMORY_UTILIZATION
    return VllmSizes(tp, dp, max_model_len, utilization, tuple(reasons))
