"""EDGE (torch): greedy generation with the batch's shared prompt prefix prefilled once.

Stock lm-eval hands a left-padded batch to ``model.generate``: every row prefills its whole
prompt (few-shot prompts share most of it), and every row keeps decoding until the last row
stops. Here a batch (prompts sorted, so neighbours share prefixes) prefills the longest common
prefix once, copies its KV cache to each row, prefills the remainders, and drops a row from
the decode loop as soon as it has emitted EOS or one of the stop strings. Up to the first stop
string the tokens are the greedy tokens stock computes; what stock generates after it is cut
off by lm-eval's post-processing anyway.

With ``draft_tokens > 0`` a decode step also checks prompt-lookup drafts (``prompt_lookup``):
the forward covers each row's newest token and its draft, a row keeps what matches its argmax,
and the cache columns of rejected drafts are masked (and cropped where no row kept them), the
way padding columns already are.

Only plain greedy decoding takes this path; ``is_plain_greedy`` sends anything else (sampling,
beams, logits processors from the model's generation config) to stock ``generate``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lm_eval_ext.hf.policy.batching import common_prefix_tokens
from lm_eval_ext.hf.compute.grouped_attention import grouped_query_attention
from lm_eval_ext.hf.policy.sampling import SAMPLING_KEYS
from lm_eval_ext.hf.compute.kv_cache import SPARE_COLUMNS, RowStack, clone_cache, growing_cache, plain_cache
from lm_eval_ext.hf.policy.prompt_lookup import PromptLookup, StopStrings, accepted_tokens, clip_emitted, draft_room
from lm_eval_ext.hf.compute.scoring import ModelParts, execution_device

#: generation_config fields that add logits processors; any non-default value -> stock generate
_PROCESSOR_FIELDS = {
    "repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
    "min_length": (None, 0), "min_new_tokens": (None, 0), "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "sequence_bias": (None,), "exponential_decay_length_penalty": (None,), "num_beams": (None, 1),
    "renormalize_logits": (None, False), "encoder_repetition_penalty": (None, 1.0),
}


#: generation_config fields of samplers we do not reproduce; any non-default value -> stock generate
_SAMPLER_FIELDS = {"typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0)}


def is_plain_greedy(generation_config, kwargs: dict) -> bool:
    if set(kwargs) - {"do_sample", "temperature", "seed"}:
        return False
    if kwargs.get("do_sample") or kwargs.get("temperature") not in (None, 0, 0.0):
        return False
    return all(getattr(generation_config, name, None) in ok for name, ok in _PROCESSOR_FIELDS.items())


def is_plain_sampling(generation_config, kwargs: dict) -> bool:
    """``do_sample`` with temperature, top-k, top-p, min-p (``policy/sampling.py``) and nothing else."""
    if not kwargs.get("do_sample") or set(kwargs) - SAMPLING_KEYS:
        return False
    fields = {**_PROCESSOR_FIELDS, **_SAMPLER_FIELDS}
    return all(getattr(generation_config, name, None) in ok for name, ok in fields.items())


def eos_token_ids(generation_config) -> set[int]:
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        return set()
    return {eos} if isinstance(eos, int) else set(eos)


@dataclass
class GenerationCost:
    computed_tokens: int = 0
    useful_tokens: int = 0
    decode_steps: int = 0
    """forwards after the prefill (drafts make them fewer than the tokens generated)"""


def _last_logits(parts: ModelParts, hidden: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return parts.head(picked.to(execution_device(parts.head)))


#: a remainder (prompt after the shared prefix) this long is prefilled alone, unpadded: causal
#: attention without a mask takes sdpa's fused kernel and no padding is computed. 8 GSM8K
#: prompts of ~900 tokens on the 2-core CPU: 13.2 s one by one, 17.5 s as one padded batch.
#: Short remainders go together: one forward of a few tokens per row would cost more in calls.
SOLO_PREFILL_TOKENS = 128


def _legacy_cache(config):
    return plain_cache(config)  # the config decides per-layer cache kinds (sliding windows) where supported


def _prefill(parts: ModelParts, prompts: Sequence[Sequence[int]], device, room: int) -> tuple:
    """Shared prefix once, then each row's remainder; returns (cache, mask, next positions,
    first tokens, computed tokens). ``room``: the columns decoding may still append."""
    shared = min(common_prefix_tokens(prompts[0], p) for p in prompts)
    shared = min(shared, min(len(p) for p in prompts) - 1)  # every row keeps >= 1 token to predict from
    config = parts.model.config
    rests = [list(p[shared:]) for p in prompts]
    width = max(len(r) for r in rests)
    mask = torch.zeros((len(prompts), shared + width), dtype=torch.long)
    mask[:, :shared] = 1
    for i, rest in enumerate(rests):
        mask[i, shared : shared + len(rest)] = 1
    growing = growing_cache(config)  # None: some layer is not a plain DynamicLayer (sliding windows)
    solo = len(prompts) > 1 and width >= SOLO_PREFILL_TOKENS and growing is not None
    cache = plain_cache(config) if solo else (growing or _legacy_cache(config))
    if shared > 0:
        prefix = torch.tensor([list(prompts[0][:shared])], dtype=torch.long, device=device)
        parts.decoder(input_ids=prefix, past_key_values=cache, use_cache=True)
    if solo:  # every layer is a plain DynamicLayer: rows stack
        cache, first = _prefill_rows(parts, cache, shared, rests, device, room)
    else:
        if shared > 0:
            cache.batch_repeat_interleave(len(prompts))
        first = _prefill_batch(parts, cache, shared, rests, mask, device)
    lengths = torch.tensor([len(r) for r in rests], device=device)
    computed = shared + (sum(len(r) for r in rests) if solo else len(prompts) * width)
    return cache, mask.to(device), lengths + shared, first, computed


def _prefill_rows(parts: ModelParts, prefix_cache, shared: int, rests, device, room: int):
    """Each remainder alone over its own copy of the prefix cache, copied at once into one
    growing cache of every row (right-padded; the caller's mask hides the padding)."""
    config = parts.model.config
    stack = RowStack(config, len(rests), shared + max(len(r) for r in rests) + min(room, SPARE_COLUMNS))
    first = []
    for rest in rests:
        row_cache = clone_cache(prefix_cache, config) if shared > 0 else plain_cache(config)
        ids = torch.tensor([rest], dtype=torch.long, device=device)
        positions = torch.arange(shared, shared + len(rest), device=device).unsqueeze(0)
        hidden = parts.decoder(input_ids=ids, position_ids=positions, past_key_values=row_cache,
                               use_cache=True).last_hidden_state
        first.append(_last_logits(parts, hidden, torch.tensor([len(rest) - 1], device=device)).argmax(dim=-1))
        stack.add(row_cache)
    return stack.finish(), torch.cat(first)


def _prefill_batch(parts: ModelParts, cache, shared: int, rests, mask: torch.Tensor, device) -> torch.Tensor:
    """Every remainder in one right-padded forward over the (repeated) prefix cache; ``mask``
    covers the prefix and each row's remainder."""
    width = max(len(r) for r in rests)
    ids = torch.zeros((len(rests), width), dtype=torch.long)
    for i, rest in enumerate(rests):
        ids[i, : len(rest)] = torch.tensor(rest)
    positions = torch.arange(shared, shared + width).expand(len(rests), -1)
    hidden = parts.decoder(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=positions.to(device), past_key_values=cache,
                           use_cache=True).last_hidden_state
    lengths = torch.tensor([len(r) for r in rests], device=device)
    return _last_logits(parts, hidden, lengths - 1).argmax(dim=-1)


@dataclass
class _Active:
    """Decode state of the rows still generating, in the order of the cache's batch dimension."""

    rows: list[int]
    tokens: torch.Tensor
    """(rows,) each row's newest token: emitted, not yet in the cache"""
    positions: torch.Tensor
    """(rows,) that token's position in its sequence"""
    mask: torch.Tensor
    """(rows, cache columns) 1 where a column holds one of the row's tokens"""

    def keep(self, at: list[int], cache) -> None:
        """Keep the rows at these indices (finished rows leave; stock keeps computing them)."""
        if len(at) == len(self.rows):
            return
        index = torch.tensor(at, device=self.mask.device)
        cache.batch_select_indices(index)
        self.rows = [self.rows[i] for i in at]
        self.tokens, self.positions, self.mask = self.tokens[index], self.positions[index], self.mask[index]


def _draft_inputs(active: _Active, drafts: list[list[int]]) -> torch.Tensor:
    """(rows, 1 + longest draft): each row's newest token, then its draft; a shorter draft is
    padded with its row's newest token (positions whose predictions are never read)."""
    width = 1 + max(len(d) for d in drafts)
    ids = active.tokens.unsqueeze(1).repeat(1, width)
    for i, draft in enumerate(drafts):
        if draft:
            ids[i, 1 : 1 + len(draft)] = torch.tensor(draft, dtype=ids.dtype)
    return ids


def _verify(parts: ModelParts, cache, active: _Active, drafts: list[list[int]]) -> tuple[list[list[int]], int]:
    """One forward over every row's newest token and draft; returns the tokens each row emits
    and the forward's size in tokens. Cache columns of rejected drafts are masked, and trailing
    columns no row kept are cropped, so the cache holds exactly each row's tokens."""
    ids = _draft_inputs(active, drafts).to(active.mask.device)
    rows, width = ids.shape
    columns = active.mask.shape[1]
    active.mask = torch.cat([active.mask, torch.ones_like(ids, dtype=active.mask.dtype)], dim=1)
    positions = active.positions.unsqueeze(1) + torch.arange(width, device=ids.device)
    hidden = parts.decoder(input_ids=ids, attention_mask=active.mask, position_ids=positions,
                           past_key_values=cache, use_cache=True).last_hidden_state
    predicted = parts.head(hidden.to(execution_device(parts.head))).argmax(dim=-1).tolist()
    emitted = [accepted_tokens(d, p) for d, p in zip(drafts, predicted, strict=True)]
    kept = max(len(e) for e in emitted)  # cache columns: the newest token plus accepted drafts
    for i, tokens in enumerate(emitted):
        active.mask[i, columns + len(tokens) :] = 0
    if kept < width:
        cache.crop(kept - width)
        active.mask = active.mask[:, : columns + kept]
    last = torch.tensor([e[-1] for e in emitted], device=active.tokens.device)
    lengths = torch.tensor([len(e) for e in emitted], device=active.positions.device)
    active.tokens, active.positions = last, active.positions + lengths
    return emitted, rows * width


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
    draft_tokens: int = 0,
) -> tuple[list[list[int]], GenerationCost]:
    """Greedy continuations (without the prompt), each ending at EOS, at the first stop string
    or at ``max_new_tokens``. ``draft_tokens > 0`` checks up to that many prompt-lookup guesses
    per row and step (``prompt_lookup``); the tokens are the same, the forwards fewer."""
    with grouped_query_attention(parts.model):  # prefill and decode read grouped K/V heads in place
        cost = GenerationCost(useful_tokens=sum(len(p) for p in prompts))
        cache, mask, positions, first, cost.computed_tokens = _prefill(
            parts, prompts, device, room=max_new_tokens + draft_tokens)
        if any(getattr(layer, "is_sliding", False) for layer in getattr(cache, "layers", ())):
            draft_tokens = 0  # a sliding window counts cache columns, and rejected drafts leave masked ones
        # positions: the first generated token sits right after its prompt
        active = _Active(list(range(len(prompts))), first, positions, mask)
        outputs: list[list[int]] = [[] for _ in prompts]
        lookups = [PromptLookup(p) for p in prompts] if draft_tokens > 0 else None
        stops = StopStrings(stop_strings, decode)
        emitted = [[token] for token in first.tolist()]
        while True:
            still = []
            for at, (row, tokens) in enumerate(zip(active.rows, emitted, strict=True)):
                tokens, done = clip_emitted(tokens, room=max_new_tokens - len(outputs[row]), eos_ids=eos_ids)
                outputs[row].extend(tokens)
                if lookups:
                    lookups[row].extend(tokens)
                if not (done or stops.hit(outputs[row], len(tokens))):
                    still.append(at)
            if not still:
                break
            active.keep(still, cache)
            room = draft_room(len(active.rows), draft_tokens)
            drafts = [lookups[r].draft(min(room, max_new_tokens - len(outputs[r]) - 1)) if lookups else []
                      for r in active.rows]
            emitted, computed = _verify(parts, cache, active, drafts)
            cost.computed_tokens += computed
            cost.decode_steps += 1
        cost.useful_tokens += sum(len(o) for o in outputs)
    return outputs, cost
