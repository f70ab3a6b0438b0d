"""PURE: parameter counts of common decoder families from ``config.json`` arithmetic alone.

Why: the exact count comes from a meta-device build (:func:`lm_eval_ext.plan.model_facts._count_on_meta`),
but that imports torch and transformers, which costs 5-7 s on a small CPU, and ``lm-eval-ext plan``
should answer in well under that for a config it has never seen. For the families below the
count is a closed formula of the config's sizes; the test suite checks every formula against the
meta build of real configs (tests/unit/test_param_formulas.py), so the meta build stays the
ground truth. Anything these formulas do not understand returns ``None`` and is built on meta:

- a ``model_type`` outside :data:`FAMILIES`;
- a config key that could change a shape (it mentions bias, norm, expert, proj, lora...) and
  is not one the family's formula reads or one known to leave shapes alone.

Worked example, Llama-3-8B (V=128256, H=4096, L=32, 32 query and 8 kv heads of 128, I=14336):
attention 4096*4096*2 + 4096*1024*2 = 41,943,040; MLP 3*4096*14336 = 176,160,768; two norms
8,192 -> 218,112,000 per layer, x32 = 6,979,584,000; embeddings and untied head 2*V*H =
1,050,673,152; final norm 4,096; total 8,030,261,248 (the published figure).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: family -> tie_word_embeddings default of its transformers config class
_TIE_DEFAULT = {
    "llama": False, "mistral": False, "qwen2": False, "qwen3": False, "mixtral": False, "phi3": False,
    "gemma": True, "gemma2": True, "gpt2": True, "gpt_neox": False, "falcon": True,
}
FAMILIES = frozenset(_TIE_DEFAULT)

#: config keys whose names look shape-relevant but that change no parameter's shape
_HARMLESS = {
    "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "router_aux_loss_coef", "output_router_logits",
    "router_jitter_noise", "num_experts_per_tok", "max_window_layers", "use_sliding_window", "sliding_window",
    "query_pre_attn_scalar", "final_logit_softcapping", "attn_logit_softcapping", "rotary_pct",
    "use_parallel_residual", "partial_rotary_factor", "layer_types", "scale_attn_by_inverse_layer_idx",
    "reorder_and_upcast_attn", "scale_attn_weights", "attention_dropout", "hidden_dropout",
    "rope_scaling", "rope_parameters", "norm_topk_prob", "pretraining_tp", "original_max_position_embeddings",
    "use_qk_norm_scaling", "summary_proj_to_labels", "summary_first_dropout", "summary_use_proj",
    "summary_activation", "summary_type", "initializer_range", "quantization_config",
}
_SHAPE_WORDS = re.compile(r"bias|norm|expert|moe|shared|lora|rank|proj|layers|inner|ffn|intermediate|head|embd|kv")


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by how quantization treats them. ``num_matrix_params`` are the weight matrices
    inside the blocks (quantizable); embeddings and the untied LM head stay in compute dtype."""

    num_params: int
    num_embedding_params: int
    num_matrix_params: int
    tied_embeddings: bool

    @property
    def num_other_params(self) -> int:
        return self.num_params - self.num_embedding_params - self.num_matrix_params


def first_set(config: dict[str, Any], *keys: str, default: Any = None) -> Any:
    """The value of the first of ``keys`` the config sets (not None), else ``default``."""
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return default


def _unread_shape_keys(config: dict[str, Any], read: set[str]) -> list[str]:
    return sorted(k for k in config if _SHAPE_WORDS.search(k) and k not in read and k not in _HARMLESS)


def _llama_like(c: dict[str, Any], family: str) -> tuple[int, int, int, set[str]]:
    """(per-layer matrix params, per-layer other params, final other params, keys read)."""
    hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    kv_heads = int(first_set(c, "num_key_value_heads", default=heads))
    head_dim = int(first_set(c, "head_dim", default=hidden // heads))
    inter = int(c["intermediate_size"])
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    attn_matrix = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
    attention_bias = bool(c.get("attention_bias", False))
    attn_bias = (q_out + 2 * kv_out + hidden) if attention_bias else 0
    if family == "qwen2":  # q, k and v always carry a bias, o never
        attn_bias = q_out + 2 * kv_out
    experts = int(first_set(c, "num_local_experts", default=1)) if family == "mixtral" else 1
    mlp_matrix = 3 * hidden * inter * experts + (hidden * experts if family == "mixtral" else 0)
    mlp_bias = (2 * inter + hidden) if c.get("mlp_bias") else 0
    norms = (4 if family == "gemma2" else 2) * hidden + (2 * head_dim if family == "qwen3" else 0)
    read = {"hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
            "attention_bias", "mlp_bias", "num_local_experts", "num_hidden_layers", "tie_word_embeddings"}
    return attn_matrix + mlp_matrix, attn_bias + mlp_bias + norms, hidden, read


def _gpt2(c: dict[str, Any]) -> tuple[int, int, int, set[str], int]:
    hidden = int(c["n_embd"])
    inner = int(first_set(c, "n_inner", default=4 * hidden))
    matrix = hidden * 3 * hidden + hidden * hidden + 2 * hidden * inner
    other = 4 * hidden + 3 * hidden + hidden + inner + hidden  # two layer norms, then the biases
    positions = int(c["n_positions"]) * hidden  # learned positions are an nn.Embedding
    return matrix, other, 2 * hidden, {"n_embd", "n_head", "n_inner", "n_layer", "n_positions", "tie_word_embeddings"}, positions


def _gpt_neox(c: dict[str, Any]) -> tuple[int, int, int, set[str]]:
    hidden, inter = int(c["hidden_size"]), int(c["intermediate_size"])
    biased = bool(c.get("attention_bias", True))
    matrix = hidden * 3 * hidden + hidden * hidden + 2 * hidden * inter
    other = 4 * hidden + ((3 * hidden + hidden) if biased else 0) + inter + hidden
    return matrix, other, 2 * hidden, {"hidden_size", "intermediate_size", "attention_bias", "num_hidden_layers",
                                       "tie_word_embeddings"}


def _falcon(c: dict[str, Any]) -> tuple[int, int, int, set[str]] | None:
    hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    head_dim = hidden // heads
    new_arch = bool(c.get("new_decoder_architecture", False))
    if new_arch:
        qkv_out = (2 * int(first_set(c, "num_kv_heads", default=heads)) + heads) * head_dim
    else:
        qkv_out = hidden + 2 * head_dim if c.get("multi_query", True) else 3 * hidden
    ffn = int(first_set(c, "ffn_hidden_size", default=4 * hidden))
    bias = bool(c.get("bias", False))
    matrix = hidden * qkv_out + hidden * hidden + 2 * hidden * ffn
    ln_in_parallel = first_set(c, "num_ln_in_parallel_attn", default=2 if new_arch else None)
    if new_arch and ln_in_parallel == 2:
        norms = 2
    else:
        norms = 1 if c.get("parallel_attn", True) else 2
    other = norms * 2 * hidden + ((qkv_out + hidden + ffn + hidden) if bias else 0)
    read = {"hidden_size", "num_attention_heads", "num_kv_heads", "new_decoder_architecture", "multi_query",
            "ffn_hidden_size", "bias", "num_ln_in_parallel_attn", "parallel_attn", "num_hidden_layers",
            "tie_word_embeddings"}
    return matrix, other, 2 * hidden, read


def formula_counts(config: dict[str, Any]) -> ParamCounts | None:
    """Exact counts for a known family, or ``None`` when only a meta build can tell."""
    family = config.get("model_type")
    if family not in FAMILIES or "text_config" in config or config.get("auto_map"):
        return None
    extra_embedding = 0
    if family == "gpt2":
        matrix, other, final, read, extra_embedding = _gpt2(config)
        layers, hidden = int(config["n_layer"]), int(config["n_embd"])
    else:
        spec = _falcon(config) if family == "falcon" else (
            _gpt_neox(config) if family == "gpt_neox" else _llama_like(config, family))
        matrix, other, final, read = spec
        layers, hidden = int(config["num_hidden_layers"]), int(config["hidden_size"])
    if _unread_shape_keys(config, read | {"vocab_size", "num_attention_heads"}):
        return None
    tied = bool(first_set(config, "tie_word_embeddings", default=_TIE_DEFAULT[family]))
    vocab = int(config["vocab_size"])
    embedding = vocab * hidden * (1 if tied else 2) + extra_embedding
    total = embedding + layers * (matrix + other) + final
    return ParamCounts(num_params=total, num_embedding_params=embedding,
                         num_matrix_params=layers * matrix, tied_embeddings=tied)
