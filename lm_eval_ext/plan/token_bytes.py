"""PURE: the one formula for the memory one token in flight costs beside the weights.

Used by the planner's per-GPU headroom (:func:`lm_eval_ext.plan.types.hf_headroom_bytes`, vLLM's
reserve) and by ``hf_ext``'s CPU token budget (:mod:`lm_eval_ext.hf.compute.budget`), so the two
cannot disagree about what a token costs.

Terms, per token of a batch (one layer's activations live at a time, no autograd):

- logits: float32 logits and their float32 log-softmax over the vocabulary, ``8 x vocab`` bytes,
  at the scored positions only (``scored_fraction``; the planner assumes every position);
- hidden: about twelve hidden-size vectors in the compute dtype (residual, attention and MLP
  intermediates);
- attention: a float32 mask and per-head scores for a row of ``attention_row_tokens``, when the
  attention kernel materialises them (CPU ``sdpa`` does; the GPU kernels work in tiles: 0);
- KV: every layer's keys and values when the batch holds its cache (``holds_kv``).

Worked example 1, the planner: Qwen2.5-14B in bfloat16 (vocab 152,064, hidden 5,120, 48 layers of
8 kv heads x 128), every position scored, KV held: logits 8 x 152,064 = 1,216,512 + hidden
12 x 5,120 x 2 = 122,880 + KV 2 x 48 x 8 x 128 x 2 = 196,608 = 1,536,000 bytes; x 4,096 tokens
in flight = 5.9 GiB of headroom per GPU (plus 1 GiB runtime).

Worked example 2, ``hf_ext`` on CPU: SmolLM2-135M in float32 (vocab 49,152, hidden 576, 9 heads,
30 layers of 3 kv heads x 64), loglikelihood rows of 512 tokens with 5 % of positions scored:
logits 8 x 49,152 x 0.05 = 19,660.8 + hidden 12 x 576 x 4 = 27,648 + attention 4 x 512 x (1 + 9)
= 20,480 -> 67,788 bytes (~66 KiB) per token; generation adds its KV, 2 x 30 x 3 x 64 x 4 = 46,080.
"""

from __future__ import annotations

from lm_eval_ext.plan.facts import DTYPE_BYTES, ModelFacts

#: float32 logits plus their float32 log-softmax, per vocabulary entry
LOGITS_BYTES_PER_ENTRY = 8
#: hidden-size vectors alive per token inside one layer (residual, attention and MLP intermediates)
HIDDEN_VECTORS_PER_TOKEN = 12


def bytes_per_token(model: ModelFacts, *, scored_fraction: float = 1.0, attention_row_tokens: int = 0,
                    holds_kv: bool = False) -> int:
    """Peak transient bytes of one padded token of a batch; see the module docstring for the terms."""
    logits = LOGITS_BYTES_PER_ENTRY * model.vocab_size * scored_fraction
    hidden = HIDDEN_VECTORS_PER_TOKEN * model.hidden_size * DTYPE_BYTES[model.dtype]
    attention = 4 * attention_row_tokens * (1 + model.num_attention_heads)
    kv_cache = model.kv_bytes_per_token if holds_kv else 0
    return int(logits + hidden + attention + kv_cache)
