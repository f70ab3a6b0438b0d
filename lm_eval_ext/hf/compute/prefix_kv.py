"""EDGE (transformers): the KV cache of a family's shared prefix, read by every batch of the family.

A family (``families.py``) computes its prefix once, as one causal row. Each of its batches then
runs over a cache whose layers hand the model the prefix's keys and values broadcast to the
batch's rows, followed by the batch's own: the rows attend to the prefix exactly as they would
inside the unshared sequence (positions continue at ``len(prefix)``; ``scoring.tree_attention_mask``
opens the prefix columns to every node). The layers keep nothing of the batch, so one prefix cache
serves any number of batches and its memory is ``len(prefix)`` tokens of KV, not rows x that.

Only models whose cache layers are all plain ``DynamicLayer`` (no sliding windows) and whose
attention takes 4D masks (eager, sdpa) use families; ``supports_prefix`` says so.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from lm_eval_ext.hf.compute.kv_cache import growing_cache, plain_cache


class PrefixLayer(DynamicLayer):
    """A one-row prefix's keys and values, returned broadcast to the batch before its new states."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        rows = key_states.shape[0]
        keys = torch.cat([self.keys.expand(rows, -1, -1, -1), key_states], dim=-2)
        values = torch.cat([self.values.expand(rows, -1, -1, -1), value_states], dim=-2)
        return keys, values


def supports_prefix(parts: Any) -> bool:
    """Split decoder, 4D masks, and a cache of plain layers (``growing_cache`` checks the kinds)."""
    return parts.split and parts.supports_tree_mask and growing_cache(parts.model.config) is not None


class PrefixStore:
    """The prefix cache of the family being scored (one at a time: families come in order)."""

    def __init__(self) -> None:
        self.tokens: tuple[int, ...] = ()
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        #: prefix tokens computed so far (the cost report adds them to the batch that paid)
        self.computed_tokens = 0
        #: prefixes computed so far (one per family unless an OOM re-packing interleaves them)
        self.num_computed = 0

    def clear(self) -> None:
        self.tokens, self.layers = (), []

    def cache_for(self, parts: Any, prefix: tuple[int, ...], device: Any):
        """A cache that prepends ``prefix`` (computed now unless it is the stored one)."""
        config = parts.model.config
        if prefix != self.tokens or not self.layers:
            self.clear()
            cache = plain_cache(config)
            ids = torch.tensor([list(prefix)], dtype=torch.long, device=device)
            parts.decoder(input_ids=ids, past_key_values=cache, use_cache=True)
            self.layers = [(layer.keys, layer.values) for layer in cache.layers]
            self.tokens = prefix
            self.computed_tokens += len(prefix)
            self.num_computed += 1
        cache = plain_cache(config)
        cache.layers = [PrefixLayer(keys, values) for keys, values in self.layers]
        return cache
