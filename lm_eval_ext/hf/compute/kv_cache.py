"""EDGE (transformers): a KV cache that appends in place, and per-row caches stacked into one.

transformers' ``DynamicLayer`` appends each decode step with ``torch.cat``, which copies the
layer's whole cache every step. With 8 rows of ~1,000 cached tokens on the project's 2-core
CPU those copies cost as much as reading the weights: a SmolLM2-135M decode step took
235-270 ms, and 121-136 ms with this cache plus grouped-query decode attention
(``grouped_attention``), same logits bit for bit.

``GrowingLayer`` keeps ``keys``/``values`` as views of the first columns of larger buffers and
writes new columns into the spare ones; everything else ``DynamicLayer`` does (crop, length,
mask sizes) works on those views unchanged. Layers of other kinds (sliding windows) are never
replaced: ``growing_cache`` returns None for such models and callers keep the plain cache.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from lm_eval_ext.compat import dynamic_cache_for

#: spare columns reserved past what is needed now; a full buffer grows by at least this much
SPARE_COLUMNS = 128


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose appends write into reserved columns instead of concatenating."""

    def __init__(self) -> None:
        super().__init__()
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def _holds_views(self, rows: int, columns: int) -> bool:
        """keys are still a view of our buffers (crop keeps that, row selection by ``DynamicLayer``
        does not), with this many rows and room for ``columns`` columns."""
        buffers = self._buffers
        return (buffers is not None and self.get_seq_length() > 0
                and self.keys.data_ptr() == buffers[0].data_ptr()
                and buffers[0].shape[0] == rows and columns <= buffers[0].shape[2])

    def adopt(self, keys: torch.Tensor, values: torch.Tensor, columns: int) -> None:
        """Take ``keys``/``values`` (rows, heads, length, head dim) into buffers of ``columns``
        columns. Spare columns are zeros: a masked column gets zero weight, and zero times an
        uninitialised NaN would still be NaN."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        length = keys.shape[2]
        buffers = []
        for states in (keys, values):
            buffer = states.new_zeros((*states.shape[:2], columns, states.shape[3]))
            buffer[:, :, :length] = states
            buffers.append(buffer)
        self._buffers = (buffers[0], buffers[1])
        self._view(length)

    def _view(self, length: int) -> None:
        keys, values = self._buffers
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        needed = length + key_states.shape[2]
        if not self._holds_views(key_states.shape[0], needed):
            old_keys, old_values = ((self.keys, self.values) if length else
                                    (key_states[:, :, :0], value_states[:, :, :0]))
            self.adopt(old_keys, old_values, needed + max(SPARE_COLUMNS, needed // 4))
        keys, values = self._buffers
        keys[:, :, length:needed] = key_states
        values[:, :, length:needed] = value_states
        self._view(needed)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        length = self.get_seq_length()
        if length and self._holds_views(self.keys.shape[0], length):
            self._buffers = (self._buffers[0][indices], self._buffers[1][indices])
            self._view(length)
        else:
            super().batch_select_indices(indices)


def growing_cache(config) -> DynamicCache | None:
    """An empty cache of ``GrowingLayer`` for ``config``'s decoder, or None when the config asks
    for other layer kinds (sliding windows) or this transformers builds caches differently."""
    cache = dynamic_cache_for(config)
    if cache is None:
        return None
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    cache.layers = [GrowingLayer() for _ in layers]
    return cache


def is_stackable(cache: DynamicCache) -> bool:
    """Every layer of a one-row cache is a plain ``DynamicLayer`` holding states."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and layer.get_seq_length() > 0 for layer in layers)


def plain_cache(config) -> DynamicCache:
    return dynamic_cache_for(config) or DynamicCache()


def clone_cache(cache: DynamicCache, config) -> DynamicCache:
    """A plain cache holding copies of ``cache``'s states (appending to one leaves the other)."""
    copy = plain_cache(config)
    for target, source in zip(copy.layers, cache.layers, strict=True):
        target.update(source.keys, source.values)  # concatenated onto an empty tensor: a copy
    return copy


class RowStack:
    """One growing cache of ``rows`` rows, filled one row at a time from one-row caches of any
    length: row ``i`` holds its own columns first, then zeros (the caller masks them). Each
    row cache is emptied as it is copied, so at most one of them lives beside the stack."""

    def __init__(self, config, rows: int, columns: int) -> None:
        cache = growing_cache(config)
        if cache is None:
            raise ValueError("RowStack needs a model whose cache layers are all plain DynamicLayers")
        self.cache, self.rows, self.columns = cache, rows, columns
        self.lengths: list[int] = []

    def add(self, row_cache: DynamicCache) -> None:
        if not is_stackable(row_cache) or len(row_cache.layers) != len(self.cache.layers):
            raise ValueError("RowStack.add needs a one-row cache of plain DynamicLayers")
        at, length = len(self.lengths), row_cache.get_seq_length()
        if at >= self.rows or length > self.columns:
            raise ValueError(f"row {at} of length {length} does not fit {self.rows} x {self.columns}")
        for layer, row in zip(self.cache.layers, row_cache.layers, strict=True):
            if layer._buffers is None:
                shape = (self.rows, row.keys.shape[1], self.columns, row.keys.shape[3])
                layer.lazy_initialization(row.keys, row.values)
                layer._buffers = (row.keys.new_zeros(shape), row.values.new_zeros(shape))
            layer._buffers[0][at, :, :length] = row.keys[0]
            layer._buffers[1][at, :, :length] = row.values[0]
            row.keys = row.values = row.keys.new_empty(0)
        self.lengths.append(length)

    def finish(self) -> DynamicCache:
        if len(self.lengths) != self.rows:
            raise ValueError(f"RowStack holds {len(self.lengths)} of {self.rows} rows")
        for layer in self.cache.layers:
            layer._view(max(self.lengths))
        return self.cache
