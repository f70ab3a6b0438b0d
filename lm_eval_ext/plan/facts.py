"""PURE: what the planner knows about a model (plain data; tests build it by hand).

The reader that fills these from a ``config.json`` is :mod:`lm_eval_ext.plan.model_facts` (EDGE).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.param_formulas import ParamCounts

DTYPE_BYTES: dict[str, int] = {
    "float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "int8": 1,
}


@dataclass(frozen=True)
class Quantization:
    method: str  # "bitsandbytes", "gptq", "awq", "fp8", ...
    bits: int
    group_size: int  # elements sharing one scale; 0 = one scale per row (negligible)

    @property
    def label(self) -> str:
        return f"{self.method}-{self.bits}bit"

    def matrix_bytes_per_param(self) -> float:
        """Packed weights plus per-group fp16 scales and packed zero points (why: a 4-bit
        model with group 128 weighs about 4.3 bits per matrix parameter, not 4)."""
        if self.group_size <= 0:
            return self.bits / 8
        return self.bits / 8 + (2 + self.bits / 8) / self.group_size


@dataclass(frozen=True)
class ModelFacts:
    """Sizes of one model in one dtype; plain data, so planner tests build it by hand."""

    name: str
    model_type: str
    dtype: str
    params: ParamCounts
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    num_experts: int = 1
    quantization: Quantization | None = None

    @property
    def num_params(self) -> int:
        return self.params.num_params

    @property
    def tied_embeddings(self) -> bool:
        return self.params.tied_embeddings

    @property
    def weights_bytes(self) -> int:
        return weights_bytes(self.params, self.dtype, self.quantization)

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys and values of every layer for one token, in the compute dtype."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * DTYPE_BYTES[self.dtype]

    def with_dtype(self, dtype: str, quantization: Quantization | None = None) -> ModelFacts:
        """The same model in another dtype (or quantized); used to suggest a smaller dtype."""
        return replace(self, dtype=normalize_dtype(dtype), quantization=quantization)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "model_type": self.model_type, "dtype": self.dtype,
            "num_params": self.num_params, "weights_bytes": self.weights_bytes,
            "quantization": self.quantization.label if self.quantization else None,
            "num_layers": self.num_layers, "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads, "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim, "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "tied_embeddings": self.tied_embeddings, "num_experts": self.num_experts,
            "kv_bytes_per_token": self.kv_bytes_per_token,
        }


def normalize_dtype(dtype: str) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_BYTES:
        raise UserError(f"dtype={dtype!r} is not supported; use one of bfloat16, float16, float32")
    return {"float": "float32", "half": "float16"}.get(name, name)


def weights_bytes(params: ParamCounts, dtype: str, quantization: Quantization | None) -> int:
    compute_bytes = DTYPE_BYTES[dtype]
    if quantization is None:
        return params.num_params * compute_bytes
    kept = (params.num_embedding_params + params.num_other_params) * compute_bytes
    return kept + int(params.num_matrix_params * quantization.matrix_bytes_per_param())
