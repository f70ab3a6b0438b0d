"""EDGE (torch, transformers): KV in one arena of row regions, and attention that reads a shared prefix in place.

The continuous generation loop (``continuous.py``) keeps every generating row in a *region* of
one arena per layer (``[kv heads, arena tokens, head dim]``, allocated once per call): row ``r``'s
own tokens (those after its family's shared prefix) sit in columns ``[start, start + length)``.
A region is sized to its own row, its prompt after the prefix plus its ``max_new_tokens``, so
rows of different lengths share the arena without the padding of equal slots (GSM8K 5-shot: own
prompts of 724-1,439 tokens; equal slots sized to the longest held ~30 % of their columns idle). A
finished row's region is free at once for the next row; nothing grows, and no live row's KV is
copied unless the free columns are scattered too thinly for the next row (then the live regions are
packed down, once). A family's prefix (``policy/gen_families.py``) is stored once,
``[kv heads, P, head dim]``, and never copied per row.

Attention reads each row's own region (one fused call per row: a decode step's query against
exactly its row's columns, stock's own call at ``batch_size=1``) and, where rows continue a prefix,
is *cascaded*: for each query the softmax over the prefix and the softmax over the row's own
columns are computed apart, each with its log-sum-exp, and merged exactly::

    out = (e^{l1 - m} o1 + e^{l2 - m} o2) / (e^{l1 - m} + e^{l2 - m}),   m = max(l1, l2)

so a decode step reads a prefix shared by ``R`` rows once (one matrix product for all ``R x``
query heads), not ``R`` times. Worked example (SmolLM2-135M, 30 layers, 3 KV heads of 64, float32:
46 KB of KV per token): 32 rows after ``gsm8k_cot``'s ~860-token 8-shot block read 40 MB of prefix
per step instead of 1.3 GB.

The model runs its own forward: this module registers an attention function with transformers'
``AttentionInterface`` (used only inside :func:`attending`) and hands the model a cache whose layers
write new keys and values into the regions. A prompt prefilled alone from position 0 without a prefix
goes through ``scaled_dot_product_attention(is_causal=True)``, the call stock's own forward makes.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from dataclasses import dataclass

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


@dataclass(eq=False)
class Region:
    """One row's columns of the arena: ``[start, start + size)``, the first ``length`` written."""

    start: int
    size: int
    length: int = 0


class SlotKV:
    """Per-layer key/value arenas of ``capacity`` token columns, handed out as row :class:`Region` s."""

    def __init__(self, num_layers: int, capacity: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device) -> None:
        shape = (num_kv_heads, capacity, head_dim)
        # zeros, not empty: no column is ever read before it is written, but a stray read of
        # uninitialised memory would be a NaN, not a wrong digit, and NaNs spread
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.capacity = capacity
        self.regions: list[Region] = []
        """the live regions, by start"""
        self.compactions = 0

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    @property
    def free_tokens(self) -> int:
        return self.capacity - sum(r.size for r in self.regions)

    def allocate(self, size: int) -> Region | None:
        """The first free run of ``size`` columns (the live regions packed down first if the free
        columns suffice only together), or None while the arena is too full."""
        if size > self.free_tokens:
            return None
        at = self._first_fit(size)
        if at is None:
            self._compact()
            at = self.capacity - self.free_tokens
        region = Region(at, size)
        self.regions.append(region)
        self.regions.sort(key=lambda r: r.start)
        return region

    def release(self, region: Region) -> None:
        self.regions.remove(region)

    def _first_fit(self, size: int) -> int | None:
        at = 0
        for region in self.regions:
            if region.start - at >= size:
                return at
            at = region.start + region.size
        return at if self.capacity - at >= size else None

    def _compact(self) -> None:
        """Every live region moved down to the lowest free columns, in order (its written columns
        only); regions keep their identity, so the rows holding them see the new start."""
        at = 0
        for region in self.regions:
            if region.start != at:
                for arena in self.keys + self.values:
                    arena[:, at : at + region.length] = arena[:, region.start : region.start + region.length].clone()
                region.start = at
            at += region.size
        self.compactions += 1


@dataclass(frozen=True)
class PrefixKV:
    """A family's shared prefix: per layer ``(keys, values)`` of ``[kv heads, P, head dim]``."""

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @property
    def num_tokens(self) -> int:
        return self.layers[0][0].shape[1] if self.layers else 0


@dataclass(eq=False)
class SlotForward:
    """What one forward over the rows holding ``regions`` of ``kv`` computes.

    ``offsets[r]``: the row's tokens already in its region; ``valid[r]``: its new tokens in this
    forward (inputs are right-padded to the longest); ``prefix_groups``: each shared prefix with
    the rows (positions in this forward) that continue it.
    """

    kv: SlotKV
    regions: list[Region]
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
    def allowed(self, row: int, device) -> torch.Tensor | None:
        """``[1, 1, queries, own columns]`` for ``row``, or None where every query sees all of
        them (a decode step): query ``i`` sees its row's columns up to its own position
        ``offsets[row] + i``; padding queries see column 0 (their outputs are never read, and a
        fully masked query would be NaN)."""
        offset, valid = self.offsets[row], self.valid[row]
        if self.query_length == 1:
            return None
        queries = torch.arange(self.query_length, device=device)
        columns = torch.arange(offset + valid, device=device)
        last = offset + torch.clamp(queries, max=max(valid - 1, 0))
        return (columns[None, :] <= last[:, None])[None, None]

    @functools.cache  # noqa: B019 (one forward object per forward: the cache dies with it)
    def additive_mask(self, row: int, device, groups: int) -> torch.Tensor | None:
        """:meth:`allowed` as 0 / -inf in float32 (what the fused kernel adds to the scores), its
        query axis repeated for the ``groups`` query heads that share a KV head."""
        allowed = self.allowed(row, device)
        if allowed is None:
            return None
        mask = torch.zeros(allowed.shape, device=device).masked_fill_(~allowed, float("-inf"))
        return mask.repeat(1, 1, groups, 1) if groups > 1 else mask

    @functools.cache  # noqa: B019 (one forward object per forward: the cache dies with it)
    def write_columns(self, device) -> torch.Tensor:
        """A decode step's one arena column per row."""
        return torch.tensor([r.start + o for r, o in zip(self.regions, self.offsets, strict=True)], device=device)

    def own(self, layer: int, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``row``'s own keys and values written so far, ``[1, kv heads, columns, D]`` views."""
        start, end = self.regions[row].start, self.regions[row].start + self.offsets[row] + self.valid[row]
        return self.kv.keys[layer][None, :, start:end], self.kv.values[layer][None, :, start:end]

    def update(self, layer: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Write the forward's new keys/values (``[rows, kv heads, queries, D]``) into the regions."""
        keys, values = self.kv.keys[layer], self.kv.values[layer]
        if key_states.shape[2] == 1:  # a decode step: one token per row, each at its own column
            columns = self.write_columns(keys.device)
            keys[:, columns] = key_states[:, :, 0].transpose(0, 1)
            values[:, columns] = value_states[:, :, 0].transpose(0, 1)
            return
        for r, (region, at, n) in enumerate(zip(self.regions, self.offsets, self.valid, strict=True)):
            if at + n > region.size:
                raise ValueError(f"a row of {at + n} tokens does not fit its region of {region.size}")
            keys[:, region.start + at : region.start + at + n] = key_states[r, :, :n]
            values[:, region.start + at : region.start + at + n] = value_states[r, :, :n]


@dataclass(eq=False)
class PackedForward:
    """Several :class:`SlotForward` parts in one forward, their tokens laid end to end in one row.

    The continuous loop's mixed step: every live row's decode token (part 0) and a chunk of the
    next prompt's prefill (part 1) go through the model as one sequence of ``sum(sizes)`` tokens,
    so the linear layers read every weight once for both (on a CPU a decode step alone costs as
    much as ~35 prefill tokens: reading the weights). Each part's tokens are its rows' queries row
    by row (``rows x query_length``, padding included); attention is computed per part, exactly as
    that part alone would compute it.
    """

    parts: list[SlotForward]

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

    def update(self, layer: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        for part, at, size in self.spans:
            part.update(layer, _unpack(key_states, part, at, size), _unpack(value_states, part, at, size))


def _unpack(states: torch.Tensor, part: SlotForward, at: int, size: int) -> torch.Tensor:
    """``[1, heads, T, D]`` -> the part's ``[rows, heads, query_length, D]``."""
    heads, head_dim = states.shape[1], states.shape[3]
    return states[0, :, at : at + size].reshape(heads, part.num_rows, part.query_length, head_dim).transpose(0, 1)


_FORWARD: contextvars.ContextVar[SlotForward | PackedForward | None] = contextvars.ContextVar(
    "lm_eval_ext_slot_forward", default=None)


class _SlotLayer(DynamicLayer):
    """A cache layer that writes into the current :class:`SlotForward`'s regions. What it returns
    is not read: the slot attention reads each row's region itself."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        forward = _FORWARD.get()
        if forward is None:
            raise RuntimeError("slot cache used outside lm_eval_ext.hf.compute.slots.attending")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        forward.update(self.index, key_states, value_states)
        return key_states, value_states

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
    """``query [rows, heads, queries, D]``; the keys and values are read from the regions (the
    ``key``/``value`` given are this forward's new ones, already written there). A packed
    forward's parts attend apart; their outputs are laid end to end again."""
    _check_call(module, dropout, kwargs)
    forward = _FORWARD.get()
    if not isinstance(forward, PackedForward):
        return _attend(forward, module, query, scaling), None
    outputs = []
    for part, at, size in forward.spans:
        out = _attend(part, module, _unpack(query, part, at, size), scaling)
        outputs.append(out.reshape(size, *out.shape[2:]))
    return torch.cat(outputs)[None], None


def _attend(forward: SlotForward, module, query, scaling) -> torch.Tensor:
    """One part's attention, ``[rows, queries, heads, D]``: each row against its own region (one
    fused call per row, no row's columns padded to another's), then the shared prefixes."""
    layer = module.layer_idx
    rows, num_heads, num_queries, head_dim = query.shape
    num_kv_heads = forward.kv.keys[layer].shape[0]
    groups = num_heads // num_kv_heads
    scale = scaling if scaling is not None else head_dim ** -0.5
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if forward.causal_from_zero:  # exactly stock's call for a prompt alone
        key, value = forward.own(layer, 0)
        out = sdpa(query, key, value, is_causal=num_queries > 1, scale=scale, enable_gqa=groups > 1)
        return out.transpose(1, 2).contiguous()
    if not forward.prefix_groups:  # own columns only: one fused call per row, masked to its length
        out = torch.cat([sdpa(query[r : r + 1], *forward.own(layer, r), attn_mask=forward.allowed(r, query.device),
                              scale=scale, enable_gqa=groups > 1) for r in range(rows)])
        return out.transpose(1, 2).contiguous()
    dtype = query.dtype
    # the query axis holds groups x queries: a KV head's grouped query heads read it once
    q = query.float().reshape(rows, num_kv_heads, groups * num_queries, head_dim)
    outs, lses = [], []
    for r in range(rows):
        key, value = forward.own(layer, r)
        o, lse = attention_with_lse(q[r : r + 1], key.float(), value.float(),
                                    forward.additive_mask(r, query.device, groups), scale)
        outs.append(o)
        lses.append(lse)
    out, lse = torch.cat(outs), torch.cat(lses)
    for prefix, members in forward.prefix_groups:
        prefix_keys, prefix_values = prefix.layers[layer]
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


def supports_slots(parts) -> bool:
    """A split decoder whose cache layers are all plain full attention (no sliding windows), with
    eager or sdpa attention: the slot attention computes exactly what those compute."""
    from lm_eval_ext.hf.compute.kv_cache import growing_cache

    return parts.split and parts.supports_tree_mask and growing_cache(parts.model.config) is not None
