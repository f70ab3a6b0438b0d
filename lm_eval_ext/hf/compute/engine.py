"""EDGE (torch): the scoring engine of ``hf_ext``, an object owned by :class:`~lm_eval_ext.hf.adapter.HfExtLM`.

Two entry points, each handed the :class:`~lm_eval_ext.backend.call.Call` it works for (its request
type, budget, bar, result sink) and plain requests built by ``hf/requests.py``:

- :meth:`ScoringEngine.score`: loglikelihood requests (choices, rolling windows) packed as prefix-tree
  rows (``policy/batching.py``) in token-budget batches, few-shot prefixes computed once per call
  (``policy/families.py``, ``prefix_kv.py``), LM head only at continuation positions (``scoring.py``),
  out-of-memory split and retry (``oom.py``).
- :meth:`ScoringEngine.generate`: greedy decoding with each batch's shared prompt prefix prefilled
  once (``generation.py``).
Budgets live in :class:`~lm_eval_ext.hf.compute.budget.Budgets`.

The host (the ``HfExtLM``) provides HFLM's ``model``, ``device``, ``tokenizer``, ``max_length``,
``softmax_dtype``, ``mixed_precision_dtype`` and ``tok_decode`` (and what ``Budgets`` reads).
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lm_eval_ext.backend.call import Call
from lm_eval_ext.backend.cost_report import CostReport
from lm_eval_ext.backend.work import TokenCount
from lm_eval_ext.hf.compute.budget import Budgets
from lm_eval_ext.hf.compute.continuous import ContinuousGenerator, RowSampler
from lm_eval_ext.hf.compute.generation import eos_token_ids, greedy_generate, is_plain_greedy, is_plain_sampling
from lm_eval_ext.hf.compute.slots import UnsupportedAttention, supports_slots
from lm_eval_ext.hf.compute.oom import device_peaks_bytes, drain, reset_peaks
from lm_eval_ext.hf.compute.prefix_kv import PrefixStore, supports_prefix
from lm_eval_ext.hf.compute.probe import ProbeCache
from lm_eval_ext.hf.compute.scoring import ModelParts, score_batch, split_model
from lm_eval_ext.hf.policy.batching import (
    DEFAULT_ROW_TOKENS, Batch, GenerationRequest, ScoreRequest, lowered_budget, pack_batches, pack_generation,
    split_batch,
)
from lm_eval_ext.hf.policy.gen_families import GenerationFamily, generation_families
from lm_eval_ext.hf.policy.generation_rows import GenerationLedger, generation_rows
from lm_eval_ext.hf.policy.token_count import (
    count_generation, count_scoring, prefix_tokens_by_task, row_tokens_by_task, scoring_layout,
)
from lm_eval_ext.hf.policy.prompt_lookup import DEFAULT_DRAFT_TOKENS

#: see ``continuous.py``: a prompt this long is prefilled in pieces between decode steps
DEFAULT_PREFILL_CHUNK_TOKENS = 2048

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    max_batch_tokens: int | str | None = None
    """Padded tokens per batch; ``auto`` probes; None batches by request count (stock)."""
    share_contexts: bool = True
    """Score the choices of an item (and items sharing a prefix) from one pass over the context."""
    row_tokens: int = DEFAULT_ROW_TOKENS
    """Widest packed row, in tokens."""
    prompt_lookup_num_tokens: int = DEFAULT_DRAFT_TOKENS
    """Draft tokens per greedy step from the prompt (0 = off)."""
    strategy: str = "single"
    """The layout that was built; part of the probe key (a model split fits other budgets)."""
    prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS
    """Longest piece of one prompt prefilled between two decode steps of the continuous loop."""


class ScoringEngine:
    def __init__(self, host: Any, settings: EngineSettings, *, probe_cache: ProbeCache | None = None) -> None:
        self.host = host
        self.settings = settings
        self.budgets = Budgets(host, max_batch_tokens=settings.max_batch_tokens, strategy=settings.strategy,
                               default_row_tokens=settings.row_tokens, probe_cache=probe_cache)
        self.cost_report = CostReport()
        self.prefixes = PrefixStore()
        self._prefix_tokens_accounted = 0
        self._prefix_by_task: dict[tuple[int, ...], dict[str, float]] = {}
        #: told each call's counted work before it is computed (the run's estimate, ``estimate/ledger.py``)
        self.on_counted: Callable[[str, dict[str, TokenCount]], None] = lambda kind, counts: None
        #: a task's expected generation length for that count (the run history's, else half the budget)
        self.expected_generated: Callable[[str, int], float] = lambda task, budget: budget / 2
        self._parts: ModelParts | None = None
        self._slots_refused: str | None = None

    @property
    def parts(self) -> ModelParts:
        if self._parts is None or self._parts.model is not self.host.model:
            self._parts = split_model(self.host.model)
        return self._parts

    # ---- loglikelihood ---------------------------------------------------------------------
    def score_batch(self, batch: Batch) -> dict[int, tuple[float, bool]]:
        """One forward; the single place scoring batches meet the model (tests inject faults here)."""
        return score_batch(self.parts, batch, device=self.host.device, softmax_dtype=self.host.softmax_dtype,
                           autocast_dtype=self.host.mixed_precision_dtype, prefixes=self.prefixes)

    def score(self, call: Call, requests: Sequence[ScoreRequest], *, tasks: Sequence[str],
              on_scored: Callable[[int, tuple[float, bool]], None]) -> None:
        """Score every request (``request.index`` names it in ``tasks`` and ``on_scored``); each
        answer goes to ``on_scored`` as its batch finishes, then ``call.batch_done()``."""
        kind = call.request_type.value
        if not requests:  # under data parallel an empty-handed rank still joins the budget agreement
            self.budgets.join_agreement(kind)
            return
        share = self.sharing()[0]
        batches, call.budget_tokens, call.max_batch_requests = self.pack_call(kind, requests, tasks)
        queue = deque(batches)
        reset_peaks()
        try:
            num_ooms = drain(queue, self.score_batch, on_oom=functools.partial(self._split_scoring, call, share),
                             on_done=functools.partial(self._scored, call, tasks, on_scored))
        finally:
            self.prefixes.clear()  # a prefix's KV lives for its call only
        self.cost_report.finish_call(kind, sorted(set(tasks)), budget_tokens=call.budget_tokens,
                                     oom_retries=num_ooms, peak_memory_bytes=device_peaks_bytes())

    def pack_call(self, kind: str, requests: Sequence[ScoreRequest], tasks: Sequence[str]
                  ) -> tuple[list[Batch], int | None, int | None]:
        """The call's batches, token budget and request cap; the call's count goes to ``on_counted``."""
        share, families = self.sharing()
        packed = scoring_layout(requests, share=share, families=families, row_tokens=self.settings.row_tokens)
        self._prefix_by_task = {prefix: prefix_tokens_by_task(prefix, family_rows, tasks)
                                for prefix, family_rows in packed if prefix}
        self.on_counted(kind, count_scoring(requests, tasks, packed))
        rows = [row for _, family_rows in packed for row in family_rows]
        scored = sum(len(r.continuation_tokens) for r in requests)
        widest = max(packed, key=lambda entry: max(len(r) for r in entry[1]))
        stats = {"rows": widest[1], "prefix": widest[0], "row_tokens": max(len(r) for r in rows),
                 "scored_fraction": scored / max(1, sum(len(r) for r in rows))}
        budget, cap = self.budgets.limits(kind, stats, self.score_batch)
        batches = [batch for prefix, family_rows in packed
                   for batch in pack_batches(family_rows, max_batch_tokens=budget, max_batch_requests=cap,
                                             prefix=prefix)]
        return batches, budget, cap

    def sharing(self) -> tuple[bool, bool]:
        """(prefix-tree rows, few-shot families): what this model's scoring shares (``token_count``
        counts a call with the same two flags)."""
        share = self.settings.share_contexts and self.parts.supports_tree_mask
        return share, share and supports_prefix(self.parts)

    def _split_scoring(self, call: Call, share: bool, batch: Batch, queue: deque, exc: BaseException) -> None:
        """Split the failed batch, lower the budget for the rest of the run, re-pack the rest."""
        parts = split_batch(batch, row_tokens=self.settings.row_tokens, share=share)
        if not parts:
            raise exc  # one request alone does not fit: nothing left to split
        call.budget_tokens = lowered_budget(call.budget_tokens or batch.padded_tokens, batch.padded_tokens)
        self.budgets.lower(call.request_type.value, call.budget_tokens)
        logger.warning("out of memory at %d padded tokens (%d requests); split and retried, "
                       "budget now %d tokens", batch.padded_tokens, batch.num_requests, call.budget_tokens)
        rest: dict[tuple[int, ...], list] = {}  # the queued rows by family, in order
        for queued in queue:
            rest.setdefault(queued.prefix, []).extend(queued.rows)
        queue.clear()
        queue.extend(parts)
        for prefix, family_rows in rest.items():
            queue.extend(pack_batches(family_rows, max_batch_tokens=call.budget_tokens,
                                      max_batch_requests=call.max_batch_requests, prefix=prefix))

    def _scored(self, call: Call, tasks: Sequence[str], on_scored, batch: Batch, out: dict, wall_s: float) -> None:
        for index, answer in out.items():
            on_scored(index, answer)
        prefix_tokens = self.prefixes.computed_tokens - self._prefix_tokens_accounted  # this batch's prefix, if it paid
        self._prefix_tokens_accounted = self.prefixes.computed_tokens
        useful, counts, computed = Counter(), Counter(), Counter()
        for request in batch.requests():
            useful[tasks[request.index]] += request.useful_tokens
            counts[tasks[request.index]] += 1
        for row in batch.rows:  # rows and prefixes attributed as token_count counts them
            computed.update(row_tokens_by_task(row, tasks))
        if prefix_tokens:
            share = self._prefix_by_task.get(batch.prefix, {})
            computed.update({task: tokens * prefix_tokens / max(1, len(batch.prefix)) for task, tokens in share.items()})
        self.cost_report.add_batch(call.request_type.value, useful, wall_s=wall_s,
                                   computed_tokens=batch.computed_tokens + prefix_tokens,
                                   padded_tokens=batch.padded_tokens + prefix_tokens, requests_by_task=counts,
                                   computed_by_task=computed)
        call.computed(batch.computed_tokens + prefix_tokens)
        call.batch_done()

    # ---- generation ------------------------------------------------------------------------
    def handles_generation(self, options: dict) -> bool:
        """Greedy decoding, or sampling with temperature / top-k / top-p / min-p, of a causal model
        with split parts (sampling needs the continuous loop); anything else stays stock."""
        if self.host.backend != "causal" or not self.parts.split:
            return False
        config = self.host.model.generation_config
        return is_plain_greedy(config, options) or (is_plain_sampling(config, options) and self.continuous)

    @property
    def continuous(self) -> bool:
        """Whether this model generates through the continuous loop (``continuous.py``): slot
        attention works for it and prompt-lookup drafts (the static path's) are off."""
        return (self.settings.prompt_lookup_num_tokens == 0 and self._slots_refused is None
                and supports_slots(self.parts))

    def generate_batch(self, batch: list[GenerationRequest]):
        """One generation batch (one ``max_new_tokens`` and stop list); the single place
        generation meets the model (fault injection)."""
        device_type = torch.device(self.host.device).type
        dtype = self.host.mixed_precision_dtype
        with torch.autocast(device_type=device_type, dtype=dtype, enabled=dtype is not None):
            return greedy_generate(
                self.parts, [r.prompt_tokens for r in batch], max_new_tokens=batch[0].max_new_tokens,
                eos_ids=eos_token_ids(self.host.model.generation_config), stop_strings=batch[0].stop,
                decode=self.host.tok_decode, device=self.host.device,
                draft_tokens=self.settings.prompt_lookup_num_tokens,
            )

    def generate(self, call: Call, requests: Sequence[GenerationRequest], *, tasks: Sequence[str],
                 on_generated: Callable[[int, list[int]], None]) -> list[GenerationRequest]:
        """Generate every request (``tasks[i]`` is ``requests[i]``'s task); each continuation's
        tokens go to ``on_generated(request.index, tokens)`` as soon as it is finished. Returns the
        requests it could not generate (sampled ones, when the model refuses slot attention)."""
        kind = call.request_type.value
        if not requests:
            self.budgets.join_agreement(kind)
            return []
        if self.continuous:
            try:
                self._generate_continuous(call, requests, tasks, on_generated)
                return []
            except UnsupportedAttention as exc:  # the model's attention wants what the slots do not do
                self._slots_refused = str(exc)
                logger.warning("hf_ext: generating through the static path from now on (%s)", exc)
                kept = [(r, t) for r, t in zip(requests, tasks) if r.index not in call.values]
                requests, tasks = [r for r, _ in kept], [t for _, t in kept]
        unhandled = [r for r in requests if r.sampling is not None]
        kept = [(r, t) for r, t in zip(requests, tasks) if r.sampling is None]
        if kept:
            self._generate_static(call, [r for r, _ in kept], [t for _, t in kept], on_generated)
        return unhandled

    def _generate_static(self, call: Call, requests: Sequence[GenerationRequest], tasks: Sequence[str],
                         on_generated: Callable[[int, list[int]], None]) -> None:
        """Greedy batches of one length limit and stop list each, the batch's shared prompt prefix
        prefilled once (``generation.py``); with prompt-lookup drafts when they are on."""
        kind = call.request_type.value
        task_of = {r.index: task for r, task in zip(requests, tasks, strict=True)}
        groups: dict[tuple, list[GenerationRequest]] = {}
        for request in requests:
            groups.setdefault((request.max_new_tokens, request.stop), []).append(request)
        self._count_generation(kind, requests, tasks, families=False)
        widest = max(len(r.prompt_tokens) + r.max_new_tokens for r in requests)
        stats = {"width_tokens": widest, "scored_fraction": 1.0 / widest}
        call.budget_tokens, call.max_batch_requests = self.budgets.limits(kind, stats, self.score_batch)
        queue = deque(batch for (max_new, _), group in groups.items()
                      for batch in pack_generation(group, max_gen_tokens=max_new, max_batch_tokens=call.budget_tokens,
                                                   max_batch_requests=call.max_batch_requests))
        num_ooms = drain(queue, self.generate_batch, on_oom=functools.partial(self._split_generation, call),
                         on_done=functools.partial(self._generated, call, task_of, on_generated))
        self.cost_report.finish_call(kind, sorted(set(tasks)), budget_tokens=call.budget_tokens, oom_retries=num_ooms,
                                     peak_memory_bytes=device_peaks_bytes())

    def _generate_continuous(self, call: Call, requests: Sequence[GenerationRequest], tasks: Sequence[str],
                             on_generated: Callable[[int, list[int]], None]) -> None:
        """Every request through one continuous loop (``continuous.py``) over a pool of rows sized
        from the generation budget: ``rows = budget // columns`` (a row's columns: its prompt after
        its family's prefix + ``max_new_tokens``), at most ``MAX_GENERATION_ROWS``."""
        kind = call.request_type.value
        families = call_families(requests)
        family_of = {index: f for f, family in enumerate(families) for index in family.members}
        self._count_generation(kind, requests, tasks, families=True)
        columns = loop_columns(requests, families)
        stats = {"width_tokens": columns, "scored_fraction": 1.0 / columns}
        call.budget_tokens, call.max_batch_requests = self.budgets.limits(kind, stats, self.score_batch)
        rows = generation_rows(call.budget_tokens, call.max_batch_requests, columns, len(requests))
        ledger = GenerationLedger({r.index: t for r, t in zip(requests, tasks)},
                                  {r.index: len(r.prompt_tokens) for r in requests}, family_of,
                                  [len(f.prefix) for f in families])
        reset_peaks()
        started_s = time.perf_counter()

        def finished(index: int, tokens: list[int]) -> None:
            ledger.finished(index, len(tokens))
            on_generated(index, tokens)

        loop = self.run_loop(requests, families, max_rows=rows, on_finished=finished,
                             on_step=functools.partial(self._stepped, call))
        ledger.report(self.cost_report, kind, wall_s=time.perf_counter() - started_s, stats=loop.stats)
        self.cost_report.finish_call(kind, sorted(set(tasks)), budget_tokens=call.budget_tokens,
                                     oom_retries=loop.stats.oom_retries, peak_memory_bytes=device_peaks_bytes())

    def run_loop(self, requests: Sequence[GenerationRequest], families: Sequence[GenerationFamily], *,
                 max_rows: int, on_finished: Callable[[int, list[int]], None],
                 on_step: Callable[[int, Any], None] = lambda tokens, stats: None) -> ContinuousGenerator:
        """``requests`` through one continuous loop of ``max_rows`` rows (the call's, and
        ``plan --measure``'s timed sample); returns the finished loop (its ``stats``)."""
        loop = ContinuousGenerator(
            self.parts, self.host.device, eos_ids=eos_token_ids(self.host.model.generation_config),
            decode=self.host.tok_decode, max_rows=max_rows, columns=loop_columns(requests, families),
            prefill_chunk_tokens=self.settings.prefill_chunk_tokens,
            samplers=lambda r: RowSampler(r.sampling, r.seed) if r.sampling is not None else None,
        )
        device_type = torch.device(self.host.device).type
        dtype = self.host.mixed_precision_dtype
        with torch.autocast(device_type=device_type, dtype=dtype, enabled=dtype is not None):
            loop.run(requests, families, on_finished=on_finished, on_step=on_step)
        return loop

    def _count_generation(self, kind: str, requests: Sequence[GenerationRequest], tasks: Sequence[str], *,
                          families: bool) -> None:
        """The call's counted work to ``on_counted`` (``token_count.py``: the same families as the loop)."""
        self.on_counted(kind, count_generation(
            [r.prompt_tokens for r in requests], [r.max_new_tokens for r in requests], tasks,
            [self.expected_generated(task, r.max_new_tokens) for r, task in zip(requests, tasks, strict=True)],
            families=families))

    @staticmethod
    def _stepped(call: Call, tokens: int, stats) -> None:
        call.computed(tokens)
        call.status(f"{stats.mean_live_rows:.1f} rows, prefill {stats.prefill_tokens:,} + decode "
                    f"{stats.decode_tokens:,} tok")
        call.batch_done()  # what finished this step is stored now

    def _split_generation(self, call: Call, batch: list, queue: deque, exc: BaseException) -> None:
        if len(batch) == 1:
            raise exc
        half = len(batch) // 2
        queue.extendleft([batch[half:], batch[:half]])
        width_tokens = max(len(r.prompt_tokens) for r in batch) + batch[0].max_new_tokens
        call.budget_tokens = lowered_budget(call.budget_tokens or len(batch) * width_tokens, len(batch) * width_tokens)
        self.budgets.lower(call.request_type.value, call.budget_tokens)
        logger.warning("out of memory generating %d requests; split and retried", len(batch))

    def _generated(self, call: Call, task_of: dict, on_generated, batch: list, result, wall_s: float) -> None:
        generated, cost = result
        for request, tokens in zip(batch, generated, strict=True):
            on_generated(request.index, tokens)
        # a batch shares its prefill across rows: its cost goes to its tasks by their rows
        rows = Counter(task_of[r.index] for r in batch)
        useful = {task: cost.useful_tokens * n // len(batch) for task, n in rows.items()}
        self.cost_report.add_batch(call.request_type.value, useful, wall_s=wall_s,
                                   computed_tokens=cost.computed_tokens, padded_tokens=cost.computed_tokens,
                                   requests_by_task=rows)
        call.computed(cost.computed_tokens)
        call.batch_done()


def call_families(requests: Sequence[GenerationRequest]) -> list[GenerationFamily]:
    """The call's prompt families (``policy/gen_families.py``), members named by request index."""
    return [GenerationFamily(f.prefix, tuple(requests[m].index for m in f.members))
            for f in generation_families([r.prompt_tokens for r in requests])]


def loop_columns(requests: Sequence[GenerationRequest], families: Sequence[GenerationFamily]) -> int:
    """A row's slot: the longest prompt after its family's prefix plus its ``max_new_tokens``."""
    prefix_of = {index: len(f.prefix) for f in families for index in f.members}
    return max(len(r.prompt_tokens) - prefix_of[r.index] + r.max_new_tokens for r in requests)
