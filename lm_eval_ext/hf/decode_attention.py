"""EDGE (transformers): decode-step attention that reads grouped K/V heads where they lie.

transformers' ``sdpa`` attention copies every K/V head ``num_key_value_groups`` times
(``repeat_kv``) whenever a mask is given, and a batch of rows of different lengths always
has one. For prefill that copy is small next to the matmuls; for a decode step over a long
cache it is most of the work. On CPU ``scaled_dot_product_attention(..., enable_gqa=True)``
reads the grouped heads in place and gives the same output bit for bit (SmolLM2-135M, 8 rows,
30 steps: max |logit diff| 0.0).

``grouped_query_decode(model)`` switches the model to that attention for the duration of a
``with`` block, only when the model uses ``sdpa``; queries longer than ``MAX_QUERY_TOKENS``,
other devices and anything unusual go to transformers' own ``sdpa_attention_forward``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "lm_eval_ext_sdpa_gqa"
#: a decode step's query: one token, or one plus prompt-lookup drafts
MAX_QUERY_TOKENS = 16
#: keyword arguments the attention call may carry without changing the computation here
_BENIGN_KWARGS = {"position_ids", "cache_position", "use_cache", "sliding_window", "output_attentions"}


def _reads_in_place(module, query, attention_mask, dropout: float, kwargs: dict) -> bool:
    """A CPU decode step of a grouped-query layer with a boolean mask (or one query and none)."""
    if query.device.type != "cpu" or getattr(module, "num_key_value_groups", 1) <= 1 or dropout:
        return False
    if query.shape[2] > MAX_QUERY_TOKENS or set(kwargs) - _BENIGN_KWARGS:
        return False
    if kwargs.get("output_attentions") or kwargs.get("sliding_window"):
        return False
    if attention_mask is None:
        return query.shape[2] == 1  # longer queries without a mask rely on is_causal alignment
    return attention_mask.dtype == torch.bool


def _attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
               **kwargs):
    if not _reads_in_place(module, query, attention_mask, dropout, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def _register() -> None:
    """Registered on first use, not at import: importing this module changes nothing global."""
    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


@contextlib.contextmanager
def grouped_query_decode(model) -> Iterator[None]:
    """Within the block, ``model`` (an ``sdpa`` model) attends through ``_attention``."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    _register()
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
