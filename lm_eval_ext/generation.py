"""EDGE (torch): greedy generation with the batch's shared prompt prefix prefilled once.

Stock lm-eval hands a left-padded batch to ``model.generate``: every row prefills its whole
prompt (few-shot prompts share most of it), and every row keeps decoding until the last row
stops. Here a batch (prompts sorted, so neighbours share prefixes) prefills the longest common
prefix once, copies its KV cache to each row, prefills the remainders, and drops a row from
the decode loop as soon as it has emitted EOS or one of the stop strings. Up to the first stop
string the tokens are the greedy tokens stock computes; what stock generates after it is cut
off by lm-eval's post-processing anyway.

Only plain greedy decoding takes this path; ``is_plain_greedy`` sends anything else (sampling,
beams, logits processors from the model's generation config) to stock ``generate``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lm_eval_ext.batching import common_prefix_tokens
from lm_eval_ext.scoring import ModelParts, execution_device

#: generation_config fields that add logits processors; any non-default value -> stock generate
_PROCESSOR_FIELDS = {
    "repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
    "min_length": (None, 0), "min_new_tokens": (None, 0), "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "sequence_bias": (None,), "exponential_decay_length_penalty": (None,), "num_beams": (None, 1),
    "renormalize_logits": (None, False), "encoder_repetition_penalty": (None, 1.0),
}


def is_plain_greedy(generation_config, kwargs: dict) -> bool:
    if set(kwargs) - {"do_sample", "temperature"}:
        return False
    if kwargs.get("do_sample") or kwargs.get("temperature") not in (None, 0, 0.0):
        return False
    return all(getattr(generation_config, name, None) in ok for name, ok in _PROCESSOR_FIELDS.items())


def eos_token_ids(generation_config) -> set[int]:
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        return set()
    return {eos} if isinstance(eos, int) else set(eos)


@dataclass
class GenerationCost:
    computed_tokens: int = 0
    useful_tokens: int = 0


def _last_logits(parts: ModelParts, hidden: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return parts.head(picked.to(execution_device(parts.head)))


def _prefill(parts: ModelParts, prompts: Sequence[Sequence[int]], device) -> tuple:
    """Shared prefix once, then each row's remainder; returns (cache, mask, next positions,
    first tokens, computed tokens)."""
    from transformers import DynamicCache

    shared = min(common_prefix_tokens(prompts[0], p) for p in prompts)
    shared = min(shared, min(len(p) for p in prompts) - 1)  # every row keeps >= 1 token to predict from
    try:  # the config decides per-layer cache kinds (sliding windows) where supported
        cache = DynamicCache(config=parts.model.config)
    except TypeError:
        cache = DynamicCache()
    computed = 0
    if shared > 0:
        prefix = torch.tensor([list(prompts[0][:shared])], dtype=torch.long, device=device)
        parts.decoder(input_ids=prefix, past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(len(prompts))
        computed += shared
    rests = [list(p[shared:]) for p in prompts]
    width = max(len(r) for r in rests)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), shared + width), dtype=torch.long)
    mask[:, :shared] = 1
    for i, rest in enumerate(rests):
        ids[i, : len(rest)] = torch.tensor(rest)
        mask[i, shared : shared + len(rest)] = 1
    positions = torch.arange(shared, shared + width).expand(len(prompts), -1)
    mask, ids = mask.to(device), ids.to(device)
    hidden = parts.decoder(input_ids=ids, attention_mask=mask, position_ids=positions.to(device),
                           past_key_values=cache, use_cache=True).last_hidden_state
    lengths = torch.tensor([len(r) for r in rests], device=device)
    first = _last_logits(parts, hidden, lengths - 1).argmax(dim=-1)
    computed += len(prompts) * width
    return cache, mask, lengths + shared, first, computed


@torch.no_grad()
def greedy_generate(
    parts: ModelParts,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_ids: set[int],
    stop_strings: Sequence[str],
    decode: Callable[[list[int]], str],
    device,
) -> tuple[list[list[int]], GenerationCost]:
    """Greedy continuations (without the prompt), each ending at EOS, at the first stop string
    or at ``max_new_tokens``."""
    cost = GenerationCost(useful_tokens=sum(len(p) for p in prompts))
    cache, mask, positions, tokens, cost.computed_tokens = _prefill(parts, prompts, device)
    outputs: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    for step in range(max_new_tokens):
        still, keep_at = [], []
        for at, (row, token) in enumerate(zip(active, tokens.tolist(), strict=True)):
            outputs[row].append(token)
            if token in eos_ids or any(s in decode(outputs[row]) for s in stop_strings):
                continue
            still.append(row)
            keep_at.append(at)
        if not still or step == max_new_tokens - 1:
            break
        if len(still) < len(active):  # finished rows leave the batch (stock keeps computing them)
            keep = torch.tensor(keep_at, device=device)
            cache.batch_select_indices(keep)
            mask, positions, tokens = mask[keep], positions[keep], tokens[keep]
        active = still
        mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=device)], dim=1)
        hidden = parts.decoder(input_ids=tokens.unsqueeze(1), attention_mask=mask,
                               position_ids=positions.unsqueeze(1), past_key_values=cache,
                               use_cache=True).last_hidden_state
        tokens = _last_logits(parts, hidden, torch.zeros(len(active), dtype=torch.long, device=device)).argmax(-1)
        positions = positions + 1
        cost.computed_tokens += len(active)
    cost.useful_tokens += sum(len(o) for o in outputs)
    return outputs, cost
