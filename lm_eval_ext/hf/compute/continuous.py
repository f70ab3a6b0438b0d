"""EDGE (torch): continuous batching: one generation loop that keeps every row busy.

A pool of live rows decodes one token each per step. When a row finishes (EOS, its first stop
string, ``max_new_tokens``) its slot is free at once: the next waiting request is prefilled (in
chunks of at most ``prefill_chunk_tokens``, one chunk per step, so a long prompt never stalls the
decoding rows for long) and joins the decode step after its prompt is in. Rows continuing a shared
prefix (``policy/gen_families.py``: few-shot blocks, repeats of one prompt) read that prefix's KV
once per step (``slots.py``); the prefix is computed when its family's first row is admitted and
dropped when its last row finishes.

Greedy rows take the argmax (the first of equal maxima, as ``generate``); sampled rows draw from
their own generator (``policy/sampling.py``), so a request's sample does not depend on its
neighbours, the pool size, the rank count or a resume. On out-of-memory the youngest rows give
their slots back and wait again (their tokens so far are dropped: a re-run gives the same tokens),
and the pool shrinks for the rest of the call.

Per step, one forward: one token for every live row and, if a prompt is pending, its next chunk,
laid end to end (``slots.PackedForward``): on a CPU a decode step alone is as slow as ~35 prefill
tokens (it reads every weight), so decode rows that ride a prefill chunk cost little more than their
own tokens. What is left of a long-prompt call (GSM8K 5-shot: ~1,000 own tokens each) past its
prefill time is the tail: the decode-only steps of the last generations, at the weight-read pace.
The caller (the engine) receives each finished row through ``on_finished(index, tokens)``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from lm_eval_ext.hf.compute.oom import free_memory, is_out_of_memory
from lm_eval_ext.hf.compute.scoring import ModelParts, execution_device
from lm_eval_ext.hf.compute.slots import (
    PackedForward, PrefixKV, SlotForward, SlotKV, attending, prefix_kv_from_cache, slot_cache,
)
from lm_eval_ext.hf.compute.kv_cache import plain_cache
from lm_eval_ext.hf.policy.batching import GenerationRequest
from lm_eval_ext.hf.policy.gen_families import GenerationFamily
from lm_eval_ext.hf.policy.prompt_lookup import StopStrings, clip_emitted
from lm_eval_ext.hf.policy.sampling import SamplingSettings

logger = logging.getLogger(__name__)

#: an own prompt at least this long is prefilled alone (see ``generation.SOLO_PREFILL_TOKENS``)
SOLO_PREFILL_TOKENS = 128


@dataclass
class LoopStats:
    prefill_tokens: int = 0
    decode_tokens: int = 0
    decode_steps: int = 0
    live_row_steps: int = 0
    """sum over decode steps of the rows that decoded (live rows on average = this / steps)"""
    mixed_steps: int = 0
    """steps whose forward carried a prefill chunk beside the live rows' decode tokens"""
    requeued_rows: int = 0
    oom_retries: int = 0

    @property
    def mean_live_rows(self) -> float:
        return self.live_row_steps / self.decode_steps if self.decode_steps else 0.0


@dataclass
class _Row:
    request: GenerationRequest
    family: int
    own: tuple[int, ...]
    """the prompt after the family's prefix (at least its last token)"""
    sampler: "RowSampler | None"
    stops: StopStrings
    prefilled: int = 0
    output: list[int] = field(default_factory=list)
    pending_token: int | None = None
    """emitted, not yet in the KV: the next decode step feeds it"""


class RowSampler:
    """One request's sampling, from its own generator (see ``policy/sampling.py``)."""

    def __init__(self, settings: SamplingSettings, seed: int) -> None:
        self.settings = settings
        self.generator = torch.Generator().manual_seed(seed)

    def pick(self, logits: torch.Tensor) -> int:
        s = self.settings
        scores = logits.float() / s.temperature
        if s.top_k is not None and s.top_k < scores.shape[-1]:
            kth = torch.topk(scores, s.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if s.top_p is not None:
            ordered, order = torch.sort(scores, descending=False)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative <= (1 - s.top_p)
            drop[-1] = False  # keep at least one token
            scores = scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
        probs = scores.softmax(dim=-1)
        if s.min_p is not None:
            probs = probs.masked_fill(probs < s.min_p * probs.max(), 0.0)
        return int(torch.multinomial(probs.cpu(), 1, generator=self.generator))


class ContinuousGenerator:
    """Generates a call's requests with a pool of ``max_rows`` slots of ``columns`` tokens each."""

    def __init__(self, parts: ModelParts, device, *, eos_ids: set[int], decode: Callable[[list[int]], str],
                 max_rows: int, columns: int, prefill_chunk_tokens: int,
                 samplers: Callable[[GenerationRequest], RowSampler | None]) -> None:
        config = parts.model.config
        self.parts, self.device, self.eos_ids, self.decode_text = parts, device, eos_ids, decode
        self.max_rows, self.columns, self.chunk = max_rows, columns, prefill_chunk_tokens
        self.samplers = samplers
        self.num_layers = config.num_hidden_layers
        heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        self.dtype = next(parts.model.parameters()).dtype
        self.stats = LoopStats()

    # ---- the loop --------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, requests: Sequence[GenerationRequest], families: Sequence[GenerationFamily],
            on_finished: Callable[[int, list[int]], None],
            on_step: Callable[[int, LoopStats], None] = lambda tokens, stats: None) -> None:
        by_index = {r.index: r for r in requests}
        self.families = list(families)
        self.prefixes: dict[int, PrefixKV] = {}
        self.family_left = {f: len(family.members) for f, family in enumerate(self.families)}
        self.waiting = deque(self._row(by_index[i], f) for f, family in enumerate(self.families) for i in family.members)
        self.live: list[_Row] = []
        self.main = SlotKV(self.num_layers, self.max_rows, self.columns, self.num_kv_heads, self.head_dim, self.dtype,
                           self.device)
        self.pending: tuple[list[_Row], int] | None = None
        """rows being prefilled, and the first of the free slots they are prefilled into"""
        while self.waiting or self.pending or self.live:
            before = self.stats.prefill_tokens + self.stats.decode_tokens
            self._guarded(lambda: self._step(on_finished))
            on_step(self.stats.prefill_tokens + self.stats.decode_tokens - before, self.stats)
        self.prefixes.clear()

    def _row(self, request: GenerationRequest, family: int) -> _Row:
        prefix = self.families[family].prefix
        return _Row(request, family, tuple(request.prompt_tokens[len(prefix):]), self.samplers(request),
                    StopStrings(request.stop, self.decode_text))

    def _guarded(self, step: Callable[[], None]) -> None:
        """One step; on out-of-memory the youngest rows wait again and the pool shrinks."""
        try:
            step()
        except Exception as exc:  # noqa: BLE001 (only OOMs are answers; others re-raise)
            if not is_out_of_memory(exc):
                raise
            self.stats.oom_retries += 1
            self._shrink(exc)

    def _shrink(self, exc: BaseException) -> None:
        rows = len(self.live) + (len(self.pending[0]) if self.pending else 0)
        if rows <= 1:
            raise exc  # one row alone does not fit: nothing left to give back
        self.max_rows = max(1, rows // 2)
        back: list[_Row] = []
        if self.pending:
            back, self.pending = self.pending[0], None
        while len(self.live) > self.max_rows:
            back.append(self.live.pop())
        free_memory()
        for row in reversed(back):  # in their original order, at the front
            row.prefilled, row.output, row.pending_token = 0, [], None
            row.sampler = self.samplers(row.request)  # the same draws again
            self.waiting.appendleft(row)
        self.stats.requeued_rows += len(back)
        logger.warning("out of memory while generating; %d row(s) wait again, at most %d rows from now on",
                       len(back), self.max_rows)

    # ---- prefill ---------------------------------------------------------------------------
    def _admit(self) -> None:
        """The next prefill batch: one long own prompt alone, or the next short ones together."""
        room = self.max_rows - len(self.live)
        if self.pending or not self.waiting or room <= 0:
            return
        batch = [self.waiting.popleft()]
        if len(batch[0].own) < SOLO_PREFILL_TOKENS:
            while (self.waiting and len(batch) < room and len(self.waiting[0].own) < SOLO_PREFILL_TOKENS
                   and (len(batch) + 1) * max(len(self.waiting[0].own), *(len(r.own) for r in batch)) <= max(
                       self.chunk, SOLO_PREFILL_TOKENS)):
                batch.append(self.waiting.popleft())
        for row in batch:
            self._ensure_prefix(row.family)
        # into the free slots right after the live rows: no staging copy of a prompt's KV (its
        # bytes would add to the pool's at the peak), and no move when it joins in the same step
        start = len(self.live)
        for i in range(len(batch)):
            self.main.lengths[start + i] = 0
        self.pending = (batch, start)

    def _ensure_prefix(self, family: int) -> None:
        prefix = self.families[family].prefix
        if family in self.prefixes or not prefix:
            return
        cache = plain_cache(self.parts.model.config)
        ids = torch.tensor([list(prefix)], dtype=torch.long, device=self.device)
        self.parts.decoder(input_ids=ids, past_key_values=cache, use_cache=True)
        self.prefixes[family] = prefix_kv_from_cache(cache)
        self.stats.prefill_tokens += len(prefix)

    def _prefix_groups(self, rows: Sequence[_Row]) -> list[tuple[PrefixKV, torch.Tensor]]:
        groups: dict[int, list[int]] = {}
        for position, row in enumerate(rows):
            if self.families[row.family].prefix:
                groups.setdefault(row.family, []).append(position)
        return [(self.prefixes[f], torch.tensor(p, dtype=torch.long, device=self.device)) for f, p in groups.items()]

    # ---- one step: the live rows' decode and a prefill chunk, in one forward ----------------
    def _step(self, on_finished: Callable[[int, list[int]], None]) -> None:
        self._finish(on_finished)
        self._admit()
        decode = self._decode_part() if self.live else None
        prefill = self._prefill_part() if self.pending else None
        parts = [p for p in (decode, prefill) if p is not None]
        if not parts:
            return
        if len(parts) == 1:  # alone: the part's own shape (a prompt alone from 0 is stock's own call)
            forward, ids, positions = parts[0]
            hidden = [self._forward(ids, positions, forward)]
        else:
            self.stats.mixed_steps += 1
            packed = PackedForward([forward for forward, _, _ in parts])
            out = self._forward(torch.cat([ids.reshape(1, -1) for _, ids, _ in parts], dim=1),
                                torch.cat([positions.reshape(1, -1) for _, _, positions in parts], dim=1), packed)
            hidden = [h.reshape(forward.num_rows, forward.query_length, -1)
                      for h, (forward, _, _) in zip(out[0].split(packed.sizes), parts, strict=True)]
        if decode is not None:
            self._decoded(hidden[0])
        if prefill is not None:
            self._prefilled(prefill[0], hidden[-1])
        self._finish(on_finished)

    def _decode_part(self) -> tuple[SlotForward, torch.Tensor, torch.Tensor]:
        rows = self.live
        ids = torch.tensor([[r.pending_token] for r in rows], dtype=torch.long)
        positions = torch.tensor([[len(self.families[r.family].prefix) + self.main.lengths[i]]
                                  for i, r in enumerate(rows)], dtype=torch.long)
        forward = SlotForward(self.main, 0, self.main.lengths[: len(rows)], [1] * len(rows), self._prefix_groups(rows))
        return forward, ids, positions

    def _decoded(self, hidden: torch.Tensor) -> None:
        rows = self.live
        for i in range(len(rows)):
            self.main.lengths[i] += 1
        self.stats.decode_tokens += len(rows)
        self.stats.decode_steps += 1
        self.stats.live_row_steps += len(rows)
        for row, token in zip(rows, self._pick(rows, hidden[:, 0])):
            self._emit(row, token)

    def _prefill_part(self) -> tuple[SlotForward, torch.Tensor, torch.Tensor]:
        """The pending rows' next chunk, at most ``prefill_chunk_tokens`` each.

        Whole prompts, not short chunks, beside decoding rows (measured on GSM8K 5-shot, 32
        documents: 256-token chunks 130 s, whole ~1,000-token prompts 109 s): the prefill is
        compute-bound either way, and a prompt in fewer steps starts decoding sooner, which
        shortens the tail of decode-only steps that the last long generations run alone."""
        rows, start = self.pending
        budget = max(self.chunk, SOLO_PREFILL_TOKENS)
        take = [min(len(r.own) - r.prefilled, budget) for r in rows]
        width = max(take)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, n) in enumerate(zip(rows, take)):
            ids[i, :n] = torch.tensor(row.own[row.prefilled : row.prefilled + n])
            at = len(self.families[row.family].prefix) + row.prefilled
            positions[i] = torch.arange(at, at + width)
        forward = SlotForward(self.main, start, [r.prefilled for r in rows], [max(n, 1) for n in take],
                              self._prefix_groups(rows))
        return forward, ids, positions

    def _prefilled(self, forward: SlotForward, hidden: torch.Tensor) -> None:
        """The chunk is in; rows whose whole prompt is in take their first token and join the pool."""
        rows, start = self.pending
        take = [min(n, len(r.own) - r.prefilled) for r, n in zip(rows, forward.valid)]  # valid: at least 1
        for i, (row, n) in enumerate(zip(rows, take)):
            row.prefilled += n
            self.main.lengths[start + i] = row.prefilled
        self.stats.prefill_tokens += sum(take)
        if any(r.prefilled < len(r.own) for r in rows):
            return
        last = hidden[torch.arange(len(rows)), torch.tensor([max(n, 1) - 1 for n in take])]
        for i, (row, token) in enumerate(zip(rows, self._pick(rows, last))):
            if start + i != len(self.live):  # live rows finished while a long prompt was prefilled
                self.main.copy_row(self.main, start + i, len(self.live))  # down: never onto a pending row
            self.live.append(row)
            self._emit(row, token)
        self.pending = None

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, forward: SlotForward) -> torch.Tensor:
        with attending(self.parts.model, forward):
            out = self.parts.decoder(input_ids=ids.to(self.device), position_ids=positions.to(self.device),
                                     past_key_values=slot_cache(self.num_layers), use_cache=True)
        return out.last_hidden_state

    def _pick(self, rows: Sequence[_Row], hidden: torch.Tensor) -> list[int]:
        logits = self.parts.head(hidden.to(execution_device(self.parts.head)))
        greedy = logits.argmax(dim=-1).tolist()
        return [row.sampler.pick(logits[i]) if row.sampler is not None else greedy[i] for i, row in enumerate(rows)]

    def _emit(self, row: _Row, token: int) -> None:
        room = row.request.max_new_tokens - len(row.output)
        tokens, done = clip_emitted([token], room=room, eos_ids=self.eos_ids)
        row.output.extend(tokens)
        if done or row.stops.hit(row.output, len(tokens)):
            row.pending_token = None
        else:
            row.pending_token = token

    def _finish(self, on_finished: Callable[[int, list[int]], None]) -> None:
        """Finished rows leave; the last live row moves into each freed slot."""
        for i in range(len(self.live) - 1, -1, -1):
            row = self.live[i]
            if row.pending_token is not None:
                continue
            last = len(self.live) - 1
            if i != last:
                self.main.copy_row(self.main, last, i)
                self.live[i] = self.live[last]
            self.live.pop()
            on_finished(row.request.index, row.output)
            self.family_left[row.family] -= 1
            if self.family_left[row.family] == 0:
                self.prefixes.pop(row.family, None)
