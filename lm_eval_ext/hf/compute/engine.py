"""EDGE (torch): the scoring engine of ``hf_ext``, an object owned by :class:`~lm_eval_ext.hf.adapter.HfExtLM`.

``HfExtLM`` hands it HFLM's narrow hooks (lm-eval 0.4.13; checked by tests/unit/test_engine_contract.py):
- ``_loglikelihood_tokens`` -> :meth:`ScoringEngine.loglikelihood_tokens`: token-budget batches of
  prefix-tree rows, LM head only at continuation positions, OOM split-and-retry. Used by
  ``loglikelihood`` and, through stock ``loglikelihood_rolling``, by rolling windows.
- ``_model_generate`` -> :meth:`ScoringEngine.generate`: greedy decoding with the shared prompt
  prefix prefilled once (``generation.py``); anything else stays stock ``generate``.
Budgets live in :class:`~lm_eval_ext.hf.compute.budget.Budgets`, OOM recovery in :func:`~lm_eval_ext.hf.compute.oom.drain`.

The host (the ``HfExtLM``) provides HFLM's ``model``, ``device``, ``tokenizer``, ``max_length``,
``rank``, ``softmax_dtype``, ``mixed_precision_dtype``, ``cache_hook`` and ``tok_decode``.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import torch

from lm_eval_ext.hf.policy.batching import (
    DEFAULT_ROW_TOKENS, Batch, GenerationRequest, ScoreRequest, lowered_budget, pack_batches,
    pack_generation, pack_rows, split_batch,
)
from lm_eval_ext.hf.compute.budget import Budgets
from lm_eval_ext.hf.policy.cost_report import CostReport
from lm_eval_ext.hf.policy.families import Family, split_families
from lm_eval_ext.hf.compute.generation import eos_token_ids, greedy_generate, is_plain_greedy
from lm_eval_ext.hf.compute.oom import device_peaks_bytes, drain, reset_peaks
from lm_eval_ext.hf.compute.prefix_kv import PrefixStore, supports_prefix
from lm_eval_ext.hf.compute.probe import ProbeCache
from lm_eval_ext.hf.progress import CallProgress
from lm_eval_ext.hf.policy.prompt_lookup import DEFAULT_DRAFT_TOKENS
from lm_eval_ext.hf.compute.scoring import ModelParts, score_batch, split_model

logger = logging.getLogger("lm_eval_ext.hf.compute.engine")

#: What HfExtLM's ``_detect_batch_size`` returns: "give me every request in one call".
WHOLE_CALL = 1 << 30


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


class ScoringEngine:
    def __init__(self, host: Any, settings: EngineSettings, *, probe_cache: ProbeCache | None = None) -> None:
        self.host = host
        self.settings = settings
        self.budgets = Budgets(host, max_batch_tokens=settings.max_batch_tokens, strategy=settings.strategy,
                               default_row_tokens=settings.row_tokens, probe_cache=probe_cache)
        self.cost_report = CostReport()
        self.prefixes = PrefixStore()
        self._prefix_tokens_accounted = 0
        self._bars_disabled: bool | None = None
        self._open_bars: dict[str, CallProgress] = {}
        self.current_kind: str | None = None
        self._parts: ModelParts | None = None
        self._tasks: dict[str, Counter] = {}
        self._task_of: dict[Any, str] = {}

    @property
    def parts(self) -> ModelParts:
        if self._parts is None or self._parts.model is not self.host.model:
            self._parts = split_model(self.host.model)
        return self._parts

    @contextlib.contextmanager
    def bars(self, *, disabled: bool):
        """Inside: the engine's bars follow ``disabled`` (the user's ``disable_tqdm``), whatever
        HFLM's loops pass down (they are told to hide their own bars)."""
        saved, self._bars_disabled = self._bars_disabled, disabled
        try:
            yield
        finally:
            self._bars_disabled = saved
            for bar in self._open_bars.values():
                bar.close()
            self._open_bars.clear()

    def _progress(self, kind: str, num_requests: int, disable_tqdm: bool) -> CallProgress:
        """The bar of ``kind``: inside :meth:`bars` one for every engine call of that kind (rolling
        chunks, gen_kwargs groups), else one per call."""
        if self._bars_disabled is None:
            return CallProgress(kind, num_requests, disable=disable_tqdm or self.host.rank != 0)
        bar = self._open_bars.get(kind)
        if bar is None:
            bar = self._open_bars[kind] = CallProgress(kind, num_requests,
                                                       disable=self._bars_disabled or self.host.rank != 0)
        else:
            bar.extend(num_requests)
        return bar

    def _close_progress(self, bar: CallProgress) -> None:
        if bar not in self._open_bars.values():
            bar.close()

    # ---- what the caller asked for -------------------------------------------------------
    def note_request_tasks(self, request_type: str, instances: list) -> None:
        """Remember which task each request belongs to, for the cost report."""
        self.current_kind = request_type
        self._tasks[request_type] = Counter(i.task_name for i in instances)
        if request_type == "loglikelihood":
            self._task_of = {tuple(i.args): i.task_name for i in instances}

    def _task_label(self, request_type: str) -> str:
        tasks = sorted(t for t in self._tasks.get(request_type, {}) if t)
        return "+".join(tasks) if tasks else "unknown"

    # ---- loglikelihood ---------------------------------------------------------------------
    def score_batch(self, batch: Batch) -> dict[int, tuple[float, bool]]:
        """One forward; the single place scoring batches meet the model (tests inject faults here)."""
        return score_batch(self.parts, batch, device=self.host.device, softmax_dtype=self.host.softmax_dtype,
                           autocast_dtype=self.host.mixed_precision_dtype, prefixes=self.prefixes)

    def _score_requests(self, requests) -> list[ScoreRequest]:
        max_length = self.host.max_length
        out = []
        for index, (_, context_enc, continuation_enc) in enumerate(requests):
            if not context_enc or not continuation_enc or len(continuation_enc) > max_length:
                raise ValueError(f"request {index}: empty context/continuation or continuation "
                                 f"longer than max_length={max_length}")
            whole = (context_enc + continuation_enc)[-(max_length + 1):][:-1]
            if len(context_enc) + len(continuation_enc) > max_length + 1:
                logger.warning("request %d: %d tokens exceed max_length=%d; truncating on the left",
                               index, len(context_enc) + len(continuation_enc), max_length)
            out.append(ScoreRequest(index, tuple(whole), tuple(continuation_enc)))
        return out

    def loglikelihood_tokens(self, requests, *, disable_tqdm: bool = False, override_bs=None) -> list:
        # stock loglikelihood_rolling sends windows with request key None
        kind = "loglikelihood_rolling" if requests[0][0] is None else "loglikelihood"
        score_requests = self._score_requests(requests)
        share = self.settings.share_contexts and self.parts.supports_tree_mask
        families = (split_families(score_requests) if share and supports_prefix(self.parts)
                    else [Family((), tuple(score_requests))])
        packed = [(f.prefix, pack_rows(f.requests, row_tokens=self.settings.row_tokens, share=share))
                  for f in families]
        rows = [row for _, family_rows in packed for row in family_rows]
        scored = sum(len(r.continuation_tokens) for r in score_requests)
        widest = max(packed, key=lambda entry: max(len(r) for r in entry[1]))
        stats = {"rows": widest[1], "prefix": widest[0], "row_tokens": max(len(r) for r in rows),
                 "scored_fraction": scored / max(1, sum(len(r) for r in rows))}
        budget, cap = self.budgets.limits(kind, stats, self.score_batch)
        if override_bs and budget is None:
            cap = min(cap or override_bs, override_bs)
        results: dict[int, tuple[float, bool]] = {}
        progress = self._progress(kind, len(requests), disable_tqdm)
        current = {"budget": budget}

        def on_oom(batch: Batch, queue: deque, exc: BaseException) -> None:
            """Split the failed batch, lower the budget for the rest of the run, re-pack the rest."""
            parts = split_batch(batch, row_tokens=self.settings.row_tokens, share=share)
            if not parts:
                raise exc  # one request alone does not fit: nothing left to split
            current["budget"] = lowered_budget(current["budget"] or batch.padded_tokens, batch.padded_tokens)
            self.budgets.lower(kind, current["budget"])
            logger.warning("out of memory at %d padded tokens (%d requests); split and retried, "
                           "budget now %d tokens", batch.padded_tokens, batch.num_requests, current["budget"])
            rest: dict[tuple[int, ...], list] = {}  # the queued rows by family, in order
            for queued in queue:
                rest.setdefault(queued.prefix, []).extend(queued.rows)
            queue.clear()
            queue.extend(parts)
            for prefix, family_rows in rest.items():
                queue.extend(pack_batches(family_rows, max_batch_tokens=current["budget"], max_batch_requests=cap,
                                          prefix=prefix))

        def on_done(batch: Batch, out: dict, wall_s: float) -> None:
            results.update(out)
            if kind == "loglikelihood":  # written as each batch finishes: a killed run keeps them
                for index, answer in out.items():
                    self.host.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
            self._account(kind, batch, requests, wall_s)
            progress.update(batch.num_requests, batch.computed_tokens)

        reset_peaks()
        queue = deque(batch for prefix, family_rows in packed
                      for batch in pack_batches(family_rows, max_batch_tokens=budget, max_batch_requests=cap,
                                                prefix=prefix))
        try:
            num_ooms = drain(queue, self.score_batch, on_oom=on_oom, on_done=on_done)
        finally:
            self.prefixes.clear()  # a prefix's KV lives for its call only
        self._close_progress(progress)
        tasks = sorted(self._tasks.get(kind, {})) or ["unknown"]
        self.cost_report.finish_call(kind, tasks if kind == "loglikelihood" else [self._task_label(kind)],
                                     budget_tokens=budget, oom_retries=num_ooms, peak_memory_bytes=device_peaks_bytes())
        return [results[i] for i in range(len(requests))]

    def _account(self, kind: str, batch: Batch, requests, wall_s: float) -> None:
        useful, counts = Counter(), Counter()
        label = self._task_label(kind)
        for request in batch.requests():
            task = label
            if kind == "loglikelihood":
                task = self._task_of.get(tuple(requests[request.index][0]), label)
            useful[task] += request.useful_tokens
            counts[task] += 1
        prefix_tokens = self.prefixes.computed_tokens - self._prefix_tokens_accounted  # this batch's prefix, if it paid
        self._prefix_tokens_accounted = self.prefixes.computed_tokens
        self.cost_report.add_batch(kind, useful, wall_s=wall_s, computed_tokens=batch.computed_tokens + prefix_tokens,
                                   padded_tokens=batch.padded_tokens + prefix_tokens, requests_by_task=counts)

    # ---- generation ------------------------------------------------------------------------
    def handles_generation(self, attention_mask, options: dict) -> bool:
        """Greedy decoding of a causal model with split parts; anything else stays stock."""
        return (self.host.backend == "causal" and attention_mask is not None and self.parts.split
                and is_plain_greedy(self.host.model.generation_config, options))

    def generate_batch(self, batch: list[GenerationRequest], max_new: int, stop):
        """One generation batch; the single place generation meets the model (fault injection)."""
        device_type = torch.device(self.host.device).type
        dtype = self.host.mixed_precision_dtype
        with torch.autocast(device_type=device_type, dtype=dtype, enabled=dtype is not None):
            return greedy_generate(
                self.parts, [r.prompt_tokens for r in batch], max_new_tokens=max_new,
                eos_ids=eos_token_ids(self.host.model.generation_config), stop_strings=stop,
                decode=self.host.tok_decode, device=self.host.device,
                draft_tokens=self.settings.prompt_lookup_num_tokens,
            )

    def generate(self, context, max_length: int, stop, attention_mask):
        width = context.shape[1]
        max_new = max_length - width
        prompts = [row[m.bool()].tolist() for row, m in zip(context.cpu(), attention_mask.cpu(), strict=True)]
        requests = [GenerationRequest(i, tuple(p)) for i, p in enumerate(prompts)]
        widest = max(len(p) for p in prompts) + max_new
        stats = {"width_tokens": widest, "scored_fraction": 1.0 / widest}
        budget, cap = self.budgets.limits("generate_until", stats, self.score_batch)
        out = torch.full((len(prompts), width + max_new), self.host.tokenizer.pad_token_id, dtype=torch.long)
        out[:, :width] = context.cpu()
        progress = self._progress("generate_until", len(prompts), False)
        label = self._task_label("generate_until")

        def on_oom(batch: list, queue: deque, exc: BaseException) -> None:
            if len(batch) == 1:
                raise exc
            half = len(batch) // 2
            queue.extendleft([batch[half:], batch[:half]])
            width_tokens = max(len(r.prompt_tokens) for r in batch) + max_new
            self.budgets.lower("generate_until", lowered_budget(budget or len(batch) * width_tokens,
                                                                len(batch) * width_tokens))
            logger.warning("out of memory generating %d requests; split and retried", len(batch))

        def on_done(batch: list, result, wall_s: float) -> None:
            generated, cost = result
            for request, tokens in zip(batch, generated, strict=True):
                out[request.index, width : width + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            self.cost_report.add_batch("generate_until", {label: cost.useful_tokens}, wall_s=wall_s,
                                       computed_tokens=cost.computed_tokens, padded_tokens=cost.computed_tokens,
                                       requests_by_task={label: len(batch)})
            progress.update(len(batch), cost.computed_tokens)

        queue = deque(pack_generation(requests, max_gen_tokens=max_new, max_batch_tokens=budget,
                                      max_batch_requests=cap))
        num_ooms = drain(queue, lambda batch: self.generate_batch(batch, max_new, stop), on_oom=on_oom, on_done=on_done)
        self._close_progress(progress)
        self.cost_report.finish_call("generate_until", [label], budget_tokens=budget, oom_retries=num_ooms,
                                     peak_memory_bytes=device_peaks_bytes())
        return out.to(context.device)
