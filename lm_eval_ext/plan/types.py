"""PURE: the planner's vocabulary (strategies, request, plan) and its memory arithmetic.

Kept apart from :mod:`lm_eval_ext.plan.planner` so the hf and vLLM policies share one set of numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.facts import ModelFacts
from lm_eval_ext.plan.token_bytes import bytes_per_token
from lm_eval_ext.units import GiB
from lm_eval_ext.units import format_bytes as fmt

#: CUDA context, cuBLAS workspaces and allocator fragmentation, per GPU (measured 0.5-0.9 GiB)
RUNTIME_RESERVE_BYTES = 1 * GiB
#: share of host RAM a plan may use; the rest stays with the OS, dataloaders and the page cache
CPU_RAM_FRACTION = 0.85
#: vLLM's own default for gpu_memory_utilization
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
#: vLLM's context is cut to a multiple of this when the KV cache cannot hold the full window
MODEL_LEN_STEP_TOKENS = 256


class Unfit(UserError):
    """A backend policy found no layout: ``what`` failed. :func:`lm_eval_ext.plan.planner.plan`
    turns it into a :class:`~lm_eval_ext.plan.no_fit.NoFitError` naming the changes that fit."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class Strategy(str, Enum):
    SINGLE = "single"
    DATA_PARALLEL = "data_parallel"
    MODEL_SPLIT = "model_split"
    HYBRID = "hybrid"
    CPU_OFFLOAD = "cpu_offload"
    TENSOR_PARALLEL = "tensor_parallel"
    TENSOR_DATA_PARALLEL = "tensor_data_parallel"
    PIPELINE_PARALLEL = "pipeline_parallel"


HF_STRATEGIES = ("single", "data_parallel", "model_split", "hybrid", "cpu_offload")
VLLM_STRATEGIES = ("single", "tensor_parallel", "data_parallel", "tensor_data_parallel", "pipeline_parallel")
BACKENDS = ("hf", "vllm", "auto")


@dataclass(frozen=True)
class PlanRequest:
    """What the user asked for; ``None`` everywhere means "let the planner choose"."""

    backend: str = "hf"
    """hf, vllm or auto (recommend one)."""
    strategy: str = "auto"
    """auto, or one strategy of the backend, which is then checked instead of chosen."""
    num_processes: int | None = None
    """Processes the launch starts (all nodes); ``None`` plans the best launch."""
    activation_tokens: int = 4096
    """Tokens in flight in one forward pass; sizes the activation headroom per GPU."""
    max_model_len: int | None = None
    """vLLM context cap in tokens; ``None``: the model's own window, cut only if KV cannot hold it."""
    min_model_len: int = 2048
    """Shortest context vLLM may be cut to before the planner asks for more GPUs instead."""
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int | None = None
    data_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    max_memory_per_gpu_bytes: int | None = None
    """Explicit per-GPU cap (hf ``max_memory_per_gpu``); wins over the planned value."""
    max_cpu_memory_bytes: int | None = None
    allow_offload: bool = True
    """Whether auto may fall back to CPU offload (slow) when GPUs cannot hold the model."""
    vllm_available: bool = True


@dataclass(frozen=True)
class Plan:
    backend: str
    strategy: Strategy
    device: str  # "cuda" or "cpu"
    dtype: str
    num_replicas: int
    gpus_per_replica: int
    num_processes: int
    weights_bytes: int
    kv_bytes_per_token: int
    headroom_bytes: int
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    max_memory_per_gpu_bytes: tuple[int, ...] = ()
    """Planned device_map cap for each GPU of one replica's slice (hf model_split/hybrid/offload)."""
    cpu_offload_bytes: int = 0
    """Weights the plan expects in CPU RAM (cpu_offload); the rest of the weights is on GPUs."""
    max_cpu_memory_bytes: int | None = None
    """RAM cap handed to accelerate's ``max_memory["cpu"]``; beyond it layers go to disk."""
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @property
    def needs_bytes_per_gpu(self) -> int:
        """What one GPU of a replica must have free: its share of the weights plus headroom."""
        if self.gpus_per_replica == 0:
            return 0
        on_gpus = self.weights_bytes - self.cpu_offload_bytes
        return on_gpus // self.gpus_per_replica + self.headroom_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "strategy": self.strategy.value,
            "device": self.device,
            "dtype": self.dtype,
            "num_replicas": self.num_replicas,
            "gpus_per_replica": self.gpus_per_replica,
            "num_processes": self.num_processes,
            "tensor_parallel_size": self.tensor_parallel_size,
            "data_parallel_size": self.data_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "weights_bytes": self.weights_bytes,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "headroom_bytes": self.headroom_bytes,
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_memory_per_gpu_bytes": list(self.max_memory_per_gpu_bytes),
            "cpu_offload_bytes": self.cpu_offload_bytes,
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
        }


def hf_headroom_bytes(model: ModelFacts, activation_tokens: int) -> int:
    """Per-GPU reserve beside the weights for transformers: runtime + activations + the batch's KV
    (:func:`~lm_eval_ext.plan.token_bytes.bytes_per_token`, every position scored)."""
    return RUNTIME_RESERVE_BYTES + activation_tokens * bytes_per_token(model, holds_kv=True)


def vllm_reserve_bytes(model: ModelFacts, activation_tokens: int) -> int:
    """Per-GPU reserve beside weights and the paged KV cache (vLLM profiles the same peak)."""
    return RUNTIME_RESERVE_BYTES + activation_tokens * bytes_per_token(model)


def describe_model(model: ModelFacts) -> str:
    quant = f", {model.quantization.label}" if model.quantization else ""
    count = model.num_params
    size = f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"
    return (f"{model.name} has {size} parameters: {fmt(model.weights_bytes)} "
            f"of weights in {model.dtype}{quant}; its KV cache takes {model.kv_bytes_per_token:,} bytes per token.")


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
