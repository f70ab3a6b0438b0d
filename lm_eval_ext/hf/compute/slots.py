"""EDGE (torch, transformers): KV in fixed row slots, and attention that reads a shared prefix in place.

The continuous generation loop (``continuous.py``) keeps every generating row in a *slot*: per
layer, row ``r``'s own tokens (those after its family's shared prefix) sit in columns
``[0, length[r])`` of ``keys[r]`` / ``values[r]`` (``[rows, kv heads, columns, head dim]``,
allocated once per call; a finished row's slot is reused, nothing grows). A family's prefix
(``policy/gen_families.py``) is stored once, ``[kv heads, P, head dim]``, and never copied per row.

Attention is *cascaded*: for each query the softmax over the prefix and the softmax over the row's
own columns are computed apart, each with its log-sum-exp, and merged exactly::

    out = (e^{l1 - m} o1 + e^{l2 - m} o2) / (e^{l1 - m} + e^{l2 - m}),   m = max(l1, l2)

so a decode step reads a prefix shared by ``R`` rows once (one matrix product for all ``R x``
query heads), not ``R`` times. Worked example (SmolLM2-135M, 30 layers, 3 KV heads of 64, float32:
46 KB of KV per token): 32 rows after ``gsm8k_cot``'s ~860-token 8-shot block read 40 MB of prefix
per step instead of 1.3 GB.

The model runs its own forward: this module registers an attention function with transformers'
``AttentionInterface`` (used only inside :func:`attending`) and hands the model a cache whose layers
write new keys and values into the slots. A prompt prefilled alone from position 0 without a prefix
goes through ``scaled_dot_product_attention(is_causal=True)``, the call stock's own forward makes.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer

from lm_eval_ext.compat import attention_with_lse

NAME = "lm_eval_ext_slots"
#: keyword arguments the model's attention call may carry without changing the computation
_BENIGN_KWARGS = {"position_ids", "cache_position", "use_cache", "output_attentions", "sliding_window"}


class UnsupportedAttention(RuntimeError):
    """The model's attention asks for something the slot attention does not do (soft-capping,
    sliding windows, dropout...): its generations go through the static path instead."""


class SlotKV:
    """Per-layer key/value buffers of ``rows`` slots x ``columns`` tokens, and each slot's length."""

    def __init__(self, num_layers: int, rows: int, columns: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device) -> None:
        shape = (rows, num_kv_heads, columns, head_dim)
        # zeros, not empty: a masked column's weight is 0, and 0 x NaN from uninitialised memory
        # would still poison the row's output
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = [0] * rows
        self.rows, self.columns = rows, columns

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def copy_row(self, source: SlotKV, source_row: int, row: int) -> None:
        """Row ``source_row`` of ``source`` (another slot array, or this one) into slot ``row``."""
        length = source.lengths[source_row]
        if length > self.columns:
            raise ValueError(f"a row of {length} tokens does not fit {self.columns} columns")
        for mine, theirs in zip(self.keys + self.values, source.keys + source.values, strict=True):
            mine[row, :, :length] = theirs[source_row, :, :length]
        self.lengths[row] = length


@dataclass(frozen=True)
class PrefixKV:
    """A family's shared prefix: per layer ``(keys, values)`` of ``[kv heads, P, head dim]``."""

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @property
    def num_tokens(self) -> int:
        return self.layers[0][0].shape[1] if self.layers else 0


@dataclass(eq=False)
class SlotForward:
    """What one forward over slots ``start .. start + num_rows`` of ``kv`` computes.

    ``offsets[r]``: the row's tokens already in its slot; ``valid[r]``: its new tokens in this
    forward (inputs are right-padded to the longest); ``prefix_groups``: each shared prefix with
    the rows (positions in this forward) that continue it.
    """

    kv: SlotKV
    start: int
    offsets: list[int]
    valid: list[int]
    prefix_groups: list[tuple[PrefixKV, torch.Tensor]]

    @property
    def num_rows(self) -> int:
        return len(self.offsets)

    @functools.cached_property
    def width(self) -> int:
        return max(o + n for o, n in zip(self.offsets, self.valid))

    @functools.cached_property
    def query_length(self) -> int:
        return max(self.valid)

    @property
    def causal_from_zero(self) -> bool:
        """One row from column 0, no prefix: plain causal attention, as stock's own forward."""
        return self.num_rows == 1 and self.offsets[0] == 0 and not self.prefix_groups

    @functools.cache  # noqa: B019 (one forward object per forward: the cache dies with it)
    def allowed(self, device) -> torch.Tensor:
        """``[rows, 1, queries, width]``: query ``i`` of row ``r`` sees own columns up to its own
        position ``offsets[r] + i``; padding queries see column 0 (their outputs are never read,
        and a fully masked query would be NaN)."""
        queries = torch.arange(self.query_length, device=device)
        columns = torch.arange(self.width, device=device)
        offsets = torch.tensor(self.offsets, device=device)
        valid = torch.tensor(self.valid, device=device)
        last = offsets[:, None] + torch.minimum(queries[None, :], (valid - 1).clamp(min=0)[:, None])
        return (columns[None, None, :] <= last[:, :, None]).unsqueeze(1)

    @functools.cache  # noqa: B019 (one forward object per forward: the cache dies with it)
    def additive_mask(self, device) -> torch.Tensor:
        """:meth:`allowed` as 0 / -inf, in float32 (what the fused kernel adds to the scores)."""
        return torch.zeros(self.allowed(device).shape, device=device).masked_fill_(~self.allowed(device),
                                                                                  float("-inf"))

    @functools.cache  # noqa: B019 (one forward object per forward: the cache dies with it)
    def write_index(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(self.start, self.start + self.num_rows, device=device)
        return rows, torch.tensor(self.offsets, dtype=torch.long, device=device)

    def update(self, layer: int, key_states: torch.Tensor, value_states: torch.Tensor):
        """Write the forward's new keys/values into the slots; return this forward's views."""
        keys, values = self.kv.keys[layer], self.kv.values[layer]
        rows = slice(self.start, self.start + self.num_rows)
        if len(set(self.offsets)) == 1:  # every row writes the same columns (aligned prefill)
            at = self.offsets[0]
            keys[rows, :, at : at + key_states.shape[2]] = key_states
            values[rows, :, at : at + value_states.shape[2]] = value_states
        elif key_states.shape[2] == 1:  # a decode step: one token per row, each at its own column
            index_rows, index_columns = self.write_index(keys.device)
            keys[index_rows, :, index_columns] = key_states[:, :, 0]
            values[index_rows, :, index_columns] = value_states[:, :, 0]
        else:
            for r, at in enumerate(self.offsets):
                n = self.valid[r]
                keys[self.start + r, :, at : at + n] = key_states[r, :, :n]
                values[self.start + r, :, at : at + n] = value_states[r, :, :n]
        return keys[rows, :, : self.width], values[rows, :, : self.width]


@dataclass(eq=False)
class PackedForward:
    """Several :class:`SlotForward` parts in one forward, their tokens laid end to end in one row.

    The continuous loop's mixed step: every live row's decode token (part 0, on the main slots) and
    a chunk of the next prompt's prefill (part 1, on the free slots after them) go through the model as one
    sequence of ``sum(sizes)`` tokens, so the linear layers read every weight once for both (on a
    CPU a decode step alone costs as much as ~35 prefill tokens: reading the weights). Each part's
    tokens are its rows' queries row by row (``rows x query_length``, padding included); attention
    is computed per part, exactly as that part alone would compute it.
    """

    parts: list[SlotForward]
    views: dict = field(default_factory=dict)
    """layer -> each part's (keys, values) views, written by :meth:`update`, read by the attention"""

    @functools.cached_property
    def sizes(self) -> list[int]:
        return [part.num_rows * part.query_length for part in self.parts]

    @functools.cached_property
    def spans(self) -> list[tuple[SlotForward, int, int]]:
        """Each part with where its tokens start in the packed sequence and how many they are."""
        starts = [sum(self.sizes[:i]) for i in range(len(self.parts))]
        return list(zip(self.parts, starts, self.sizes, strict=True))

    width = 0
    """what the cache reports as its length: positions are given, so nothing reads it"""

    def update(self, layer: int, key_states: torch.Tensor, value_states: torch.Tensor):
        self.views[layer] = [
            part.update(layer, _unpack(key_states, part, at, size), _unpack(value_states, part, at, size))
            for part, at, size in self.spans
        ]
        return key_states, value_states


def _unpack(states: torch.Tensor, part: SlotForward, at: int, size: int) -> torch.Tensor:
    """``[1, heads, T, D]`` -> the part's ``[rows, heads, query_length, D]``."""
    heads, head_dim = states.shape[1], states.shape[3]
    return states[0, :, at : at + size].reshape(heads, part.num_rows, part.query_length, head_dim).transpose(0, 1)


_FORWARD: contextvars.ContextVar[SlotForward | PackedForward | None] = contextvars.ContextVar(
    "lm_eval_ext_slot_forward", default=None)


class _SlotLayer(DynamicLayer):
    """A cache layer that writes into the current :class:`SlotForward`'s slots."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        forward = _FORWARD.get()
        if forward is None:
            raise RuntimeError("slot cache used outside lm_eval_ext.hf.compute.slots.attending")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        return forward.update(self.index, key_states, value_states)

    def get_seq_length(self) -> int:
        forward = _FORWARD.get()
        return forward.width if forward is not None else 0


def slot_cache(num_layers: int) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = [_SlotLayer(i) for i in range(num_layers)]
    return cache


def _merge(o1: torch.Tensor, l1: torch.Tensor, o2: torch.Tensor, l2: torch.Tensor):
    top = torch.maximum(l1, l2)
    w1, w2 = torch.exp(l1 - top), torch.exp(l2 - top)
    return (o1 * w1 + o2 * w2) / (w1 + w2), top + torch.log(w1 + w2)


def _check_call(module, dropout: float, kwargs: dict) -> None:
    if dropout or set(kwargs) - _BENIGN_KWARGS or kwargs.get("output_attentions") or kwargs.get("sliding_window"):
        raise UnsupportedAttention(f"{type(module).__name__} attention with {sorted(kwargs)} (dropout {dropout})")


def _slot_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                    is_causal=None, **kwargs):
    """``query [rows, heads, queries, D]``; ``key``/``value``: the rows' own columns (the slots).
    A packed forward's parts attend apart; their outputs are laid end to end again."""
    _check_call(module, dropout, kwargs)
    forward = _FORWARD.get()
    if not isinstance(forward, PackedForward):
        return _attend(forward, module, query, key, value, scaling), None
    outputs = []
    for (part, at, size), (keys, values) in zip(forward.spans, forward.views[module.layer_idx], strict=True):
        out = _attend(part, module, _unpack(query, part, at, size), keys, values, scaling)
        outputs.append(out.reshape(size, *out.shape[2:]))
    return torch.cat(outputs)[None], None


def _attend(forward: SlotForward, module, query, key, value, scaling) -> torch.Tensor:
    """One part's attention, ``[rows, queries, heads, D]``."""
    rows, num_heads, num_queries, head_dim = query.shape
    num_kv_heads = key.shape[1]
    groups = num_heads // num_kv_heads
    scale = scaling if scaling is not None else head_dim ** -0.5
    if forward.causal_from_zero:  # exactly stock's call for a prompt alone
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=num_queries > 1,
                                                               scale=scale, enable_gqa=groups > 1)
        return out.transpose(1, 2).contiguous()
    if not forward.prefix_groups:  # own columns only: one fused call, each row masked to its length
        lone = forward.num_rows == 1 and num_queries == 1  # one row's decode step: every column is its own
        mask = None if lone else forward.allowed(query.device)
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale,
                                                               enable_gqa=groups > 1)
        return out.transpose(1, 2).contiguous()
    dtype = query.dtype
    # the query axis holds groups x queries: a KV head's grouped query heads read it once
    q = query.float().reshape(rows, num_kv_heads, groups * num_queries, head_dim)
    mask = forward.additive_mask(query.device)
    if num_queries > 1 and groups > 1:
        mask = mask.repeat(1, 1, groups, 1)
    out, lse = attention_with_lse(q, key.float(), value.float(), mask, scale)
    for prefix, members in forward.prefix_groups:
        prefix_keys, prefix_values = prefix.layers[module.layer_idx]
        every_row = len(members) == rows  # the usual case: one family's rows only, in order
        mine = q if every_row else q[members]
        # every query of every member row against the prefix: one product per KV head
        folded = mine.permute(1, 0, 2, 3).reshape(1, num_kv_heads, -1, head_dim)
        o_prefix, l_prefix = attention_with_lse(folded, prefix_keys.float()[None], prefix_values.float()[None],
                                                None, scale)
        o_prefix = o_prefix[0].reshape(num_kv_heads, len(members), -1, head_dim).permute(1, 0, 2, 3)
        l_prefix = l_prefix[0].reshape(num_kv_heads, len(members), -1, 1).permute(1, 0, 2, 3)
        if every_row:
            out, lse = _merge(out, lse, o_prefix, l_prefix)
        else:
            out[members], lse[members] = _merge(out[members], lse[members], o_prefix, l_prefix)
    out = out.reshape(rows, num_kv_heads, groups, num_queries, head_dim).reshape(rows, num_heads, num_queries, head_dim)
    return out.transpose(1, 2).contiguous().to(dtype)


@functools.cache
def _register() -> None:
    """On first use, not at import: importing this module changes nothing global. No mask function
    is registered, so transformers builds no mask for this attention (the slots know their own)."""
    AttentionInterface.register(NAME, _slot_attention)


@contextlib.contextmanager
def attending(model, forward: SlotForward | PackedForward) -> Iterator[None]:
    """Within the block, ``model`` attends through the slots of ``forward``."""
    _register()
    config = model.config
    saved = config._attn_implementation
    token = _FORWARD.set(forward)
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = saved
        _FORWARD.reset(token)


def prefix_kv_from_cache(cache: DynamicCache) -> PrefixKV:
    """A one-row plain cache (a prefix's forward) as a :class:`PrefixKV`."""
    return PrefixKV(tuple((layer.keys[0], layer.values[0]) for layer in cache.layers))


def rows_of(members: Sequence[int], device) -> torch.Tensor:
    return torch.tensor(list(members), dtype=torch.long, device=device)


def supports_slots(parts) -> bool:
    """A split decoder whose cache layers are all plain full attention (no sliding windows), with
    eager or sdpa attention: the slot attention computes exactly what those compute."""
    from lm_eval_ext.hf.compute.kv_cache import growing_cache

    return parts.split and parts.supports_tree_mask and growing_cache(parts.model.config) is not None
