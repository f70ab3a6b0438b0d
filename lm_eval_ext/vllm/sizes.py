"""PURE: the sizes one ``vllm_ext`` run uses, as the planner chose them.

:class:`VllmSizes` is what the engines read; :func:`lm_eval_ext.vllm.build.describe_vllm_build`
makes it from a :class:`~lm_eval_ext.plan.types.Plan` (the one sizing rule lives in
:mod:`lm_eval_ext.plan.vllm_policy`), so nothing here decides a size.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class VllmSizes:
    tensor_parallel_size: int
    data_parallel_size: int
    max_model_len: int | None  # None: vLLM derives it from the model config (server mode only)
    gpu_memory_utilization: float
    reasons: tuple[str, ...] = field(default=())
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    """None: vLLM's own choice (``uni`` for one rank, ``mp`` for several on one node)."""
    block_size: int | None = None
    """KV block in tokens; None: vLLM's own (16 on GPUs, 128 on CPU)."""

    def as_dict(self) -> dict:
        return {
            "tensor_parallel_size": self.tensor_parallel_size,
            "data_parallel_size": self.data_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "distributed_executor_backend": self.distributed_executor_backend,
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "block_size": self.block_size,
            "reasons": list(self.reasons),
        }
