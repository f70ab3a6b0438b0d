"""EDGE (torch): score one packed batch of loglikelihood requests.

The decoder runs over the packed rows; the LM head and the log-softmax run only on the hidden
states of the positions that predict a continuation token. Stock lm-eval applies both to every
padded position, and the ``[batch, length, vocab]`` log-softmax is its largest tensor.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lm_eval_ext.hf.policy.batching import Batch, Row
from lm_eval_ext.hf.compute.grouped_attention import grouped_query_attention
from lm_eval_ext.hf.compute.prefix_kv import PrefixStore

#: Config attributes of models whose logits are more than ``lm_head(hidden)``; for those we keep
#: the model's own forward (correct, just not cheaper) instead of guessing their post-processing.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass(frozen=True)
class ModelParts:
    """The causal LM split where scoring needs it; ``decoder``/``head`` are None when the model
    has to be called whole."""

    model: Any
    decoder: Any | None
    head: Any | None
    supports_tree_mask: bool

    @property
    def split(self) -> bool:
        return self.decoder is not None and self.head is not None


def split_model(model: Any) -> ModelParts:
    """Find the base decoder and the output embedding of a transformers causal LM."""
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None) or "eager"
    # flash kernels ignore custom 4D masks; eager/sdpa honour them
    tree_ok = impl in ("eager", "sdpa")
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_POSTPROCESSING):
        return ModelParts(model, None, None, tree_ok)
    try:
        decoder = model.get_decoder()
        head = model.get_output_embeddings()
    except (AttributeError, ValueError, NotImplementedError):
        return ModelParts(model, None, None, tree_ok)
    if decoder is None or head is None or decoder is model:
        return ModelParts(model, None, None, tree_ok)
    return ModelParts(model, decoder, head, tree_ok)


def tree_attention_mask(rows: list[Row], width: int, dtype: torch.dtype, prefix_tokens: int = 0) -> torch.Tensor:
    """Additive mask ``[rows, 1, width, prefix_tokens + width]``: node i sees the shared prefix
    (a family's cached KV, ``prefix_kv.py``), itself and its ancestors.

    Built per segment (one per inserted request, ``Row.segments``): a segment's nodes see what
    its parent node sees plus the segment up to themselves. Padding nodes see only themselves
    (and the prefix): a fully masked query row would be NaN, and a NaN value leaks into real rows
    through ``0 * NaN`` in the attention product.
    """
    allowed = torch.zeros((len(rows), width, prefix_tokens + width), dtype=torch.bool)
    allowed[:, :, :prefix_tokens] = True
    own = allowed[:, :, prefix_tokens:]  # a view: the rows' own columns
    causal = torch.ones((width, width), dtype=torch.bool).tril_()
    for r, row in enumerate(rows):
        for start, end, parent in row.segments:
            if parent >= 0:
                own[r, start:end, : parent + 1] = own[r, parent, : parent + 1]
            own[r, start:end, start:end] = causal[: end - start, : end - start]
        own[r, len(row):, len(row):] = torch.eye(width - len(row), dtype=torch.bool)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def batch_inputs(batch: Batch, parts: ModelParts, device: Any, dtype: torch.dtype) -> dict:
    """input_ids (right padded), and for packed rows (or rows after a family's prefix)
    position_ids (= depth) and the tree mask.

    When every row is a plain chain from position 0 the tensors are exactly stock's (right
    padding, no mask): causal attention already is the ancestor relation.
    """
    width = max(len(row) for row in batch.rows)
    ids = torch.zeros((len(batch.rows), width), dtype=torch.long)
    for r, row in enumerate(batch.rows):
        ids[r, : len(row)] = torch.tensor(row.tokens, dtype=torch.long)
    inputs = {"input_ids": ids.to(device)}
    if not batch.prefix and all(row.is_chain for row in batch.rows):
        return inputs
    if not parts.supports_tree_mask:
        raise ValueError("packed rows need an attention implementation that accepts 4D masks")
    pos = torch.zeros((len(batch.rows), width), dtype=torch.long)
    for r, row in enumerate(batch.rows):
        pos[r, : len(row)] = torch.tensor(row.depths, dtype=torch.long)
    inputs["position_ids"] = pos.to(device)
    inputs["attention_mask"] = tree_attention_mask(batch.rows, width, dtype, len(batch.prefix)).to(device)
    return inputs


def target_positions(batch: Batch) -> tuple[list[int], list[int], list[int]]:
    """The distinct ``(row, node)`` positions that predict a continuation token, as row and node
    lists, and for each scored token (in row and target order) the index of its position.

    The choices of one item hang under the same context node, so their first tokens are all
    predicted by that one position: its hidden state, logits and log-softmax are computed once,
    not once per choice (ARC-Easy: 2,550 positions for 3,474 scored tokens at 200 documents).
    """
    slot_of: dict[tuple[int, int], int] = {}
    slots = []
    for r, row in enumerate(batch.rows):
        for _, nodes in row.targets:
            slots.extend(slot_of.setdefault((r, node), len(slot_of)) for node in nodes)
    return [r for r, _ in slot_of], [node for _, node in slot_of], slots


#: Target positions per LM-head chunk: bounds the ``[targets, vocab]`` logits and log-softmax
#: (a 5,000-token rolling window at a 49k vocabulary would be 2 x 1 GB in float32) to ~200 MB.
HEAD_CHUNK_TOKENS = 1024


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where a module computes: an offloaded module (device_map with disk/CPU offload) keeps its
    weight on the meta device and runs on its accelerate hook's execution device."""
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    return torch.device(device) if device is not None else module.weight.device


def target_hidden(parts: ModelParts, inputs: dict, rows_idx: list[int], nodes_idx: list[int],
                  prefix_cache=None) -> tuple[torch.Tensor, bool]:
    """Hidden states (split model) or logits (whole model) at the distinct continuation-predicting
    positions (:func:`target_positions`), ``[num_positions, hidden or vocab]``; the flag says which.
    ``prefix_cache``: the family's prefix (``prefix_kv.PrefixStore.cache_for``), read, never grown."""
    if prefix_cache is not None:
        hidden = parts.decoder(**inputs, past_key_values=prefix_cache, use_cache=True).last_hidden_state
        return hidden[rows_idx, nodes_idx], True
    if parts.split:
        hidden = parts.decoder(**inputs, use_cache=False).last_hidden_state
        return hidden[rows_idx, nodes_idx], True
    logits = parts.model(**inputs, use_cache=False).logits
    return logits[rows_idx, nodes_idx], False


def target_logprobs(parts: ModelParts, picked: torch.Tensor, is_hidden: bool, wanted: list[int], slots: list[int],
                    softmax_dtype: torch.dtype | None,
                    autocast: AbstractContextManager | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each wanted token, read at position ``slots[i]`` of ``picked``, and
    whether it is the greedy token; head and log-softmax applied :data:`HEAD_CHUNK_TOKENS`
    positions at a time (the same values, a bounded peak). The head runs under ``autocast``, the
    log-softmax outside it, as in stock scoring.

    Greedy is stock's ``argmax == token`` (argmax takes the first of equal maxima), decided
    without an argmax over every position: a token below its position's maximum is not greedy,
    and only the positions whose wanted token reaches the maximum run the argmax.
    """
    device = picked.device if not is_hidden else execution_device(parts.head)
    slot_index = torch.tensor(slots, dtype=torch.long, device=device)
    want_index = torch.tensor(wanted, dtype=torch.long, device=device)
    scored, values_parts = [], []
    greedy = torch.zeros(len(slots), dtype=torch.bool, device=device)
    for start in range(0, picked.shape[0], HEAD_CHUNK_TOKENS):
        chunk = picked[start : start + HEAD_CHUNK_TOKENS].to(device)
        if is_hidden:
            with autocast or nullcontext():
                logits = parts.head(chunk)
        else:
            logits = chunk
        logprobs = F.log_softmax(logits, dim=-1, dtype=softmax_dtype)
        mine = ((slot_index >= start) & (slot_index < start + chunk.shape[0])).nonzero().squeeze(1)
        local = slot_index[mine] - start
        values = logprobs[local, want_index[mine]]
        at_max = mine[values == logprobs.amax(dim=-1)[local]]
        if at_max.numel():
            greedy[at_max] = logprobs[slot_index[at_max] - start].argmax(dim=-1) == want_index[at_max]
        scored.append(mine)
        values_parts.append(values)
    logprob = torch.empty(len(slots), dtype=values_parts[0].dtype, device=device)
    logprob[torch.cat(scored)] = torch.cat(values_parts)
    return logprob.cpu(), greedy.cpu()


@torch.no_grad()
def score_batch(
    parts: ModelParts,
    batch: Batch,
    *,
    device: Any,
    softmax_dtype: torch.dtype | None,
    autocast_dtype: torch.dtype | None,
    prefixes: PrefixStore | None = None,
) -> dict[int, tuple[float, bool]]:
    """``{request index: (sum of continuation logprobs, continuation is greedy)}``. A batch with
    a ``prefix`` reads (and first computes) its family's prefix cache from ``prefixes``."""
    dtype = next(parts.model.parameters()).dtype
    inputs = batch_inputs(batch, parts, device, autocast_dtype or dtype)
    device_type = torch.device(device).type
    wanted = [t for row in batch.rows for r, _ in row.targets for t in r.continuation_tokens]
    rows_idx, nodes_idx, slots = target_positions(batch)
    autocast = torch.autocast(device_type=device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    with autocast:
        prefix_cache = None
        if batch.prefix:
            if prefixes is None:
                raise ValueError("a batch after a shared prefix needs the engine's PrefixStore")
            prefix_cache = prefixes.cache_for(parts, batch.prefix, device)
        with grouped_query_attention(parts.model):  # masked rows read grouped K/V heads in place
            picked, is_hidden = target_hidden(parts, inputs, rows_idx, nodes_idx, prefix_cache)
    logprobs, greedy = target_logprobs(parts, picked, is_hidden, wanted, slots, softmax_dtype, autocast)
    results: dict[int, tuple[float, bool]] = {}
    start = 0
    for row in batch.rows:
        for request, nodes in row.targets:
            end = start + len(nodes)
            results[request.index] = (float(logprobs[start:end].sum()), bool(greedy[start:end].all()))
            start = end
    return results
