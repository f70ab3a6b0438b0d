"""Loglikelihood scoring for ``vllm_ext``: stock truncation and parsing, contexts computed once.

Equal to stock ``VLLM._loglikelihood_tokens`` and ``VLLM.loglikelihood_rolling`` request by request
(same kept tokens, same context length, same windows, same ``_parse_logprobs``, same summation
order). What differs (the arithmetic is in :mod:`lm_eval_ext.vllm.score_plan`):

1. Every request of an lm-eval call goes to the engine in one engine call, the choices of an item
   (same context tokens) one after the other and, under data parallel, on one replica. vLLM's
   scheduler batches them by tokens; lm-eval's ``batch_size`` does not cut the call (it would cut
   items apart and cost an engine round trip each).
2. A request whose context holds a whole reusable KV block reads vLLM's prefix cache
   (``skip_reading_prefix_cache=False``): the first choice of an item computes the context, the
   others read its blocks. Prompt logprobs are computed only from the context's last position on
   where the engine's runner allows it (``prompt_logprobs.py``).
3. Warm-ups (the context's whole blocks, computed first with no logprobs) only where
   :func:`~lm_eval_ext.vllm.score_plan.warm_up_pays`: an engine computing prompt logprobs at every
   position would otherwise pay the LM head over the first choice's context.
4. A request whose cached blocks covered positions it scores gets the missing logprobs from probes
   (:func:`~lm_eval_ext.vllm.score_plan.probe_lengths`); what probes cannot cover is scored again the
   stock way (cache skipped) and counted as a fallback with its cause.

Each result is reported as soon as it is known (the request cache stores it then), and what every
engine call computed, read from the cache and took goes into the adapter's cost report.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from lm_eval_ext.vllm.score_plan import (
    Probe, WarmupCosts, first_scored_position, group_cost_tokens, grouped_order, head_row_tokens,
    merged_prompt_logprobs, minimal_tokens, probe_lengths, probe_requests, reusable_blocks, truncate_for_scoring,
    uncovered, warm_prompt, warm_up_pays,
)

logger = logging.getLogger(__name__)

#: one request's own cost (scheduling, inputs, outputs) in tokens of forward work; measured with
#: SmolLM2-135M on the project's 2-core CPU (docs/vllm.md, "Where the time goes"): under one token
REQUEST_TOKENS = 1.0
#: fallback causes, as the cost report names them
CACHE_OFF = "prefix_cache_off"
CONTINUATION_CACHED = "continuation_cached"


def uses_prefix_cache(lm: Any) -> bool:
    return lm.ext_config.scores_with_prefix_cache and getattr(lm.engine, "supports_prefix_scoring", False)


def warmup_costs(lm: Any) -> WarmupCosts:
    """The engine's side of :func:`warm_up_pays`: no head rows to save where its runner computes
    prompt logprobs from the scored position only, else the model's head row in body tokens."""
    if getattr(lm.engine, "scores_from_start", False):
        return WarmupCosts(REQUEST_TOKENS, 0.0)
    config = lm._config
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_size = getattr(config, "num_key_value_heads", heads) * (getattr(config, "head_dim", None) or hidden // heads)
    return WarmupCosts(REQUEST_TOKENS, head_row_tokens(hidden, config.vocab_size, config.num_hidden_layers,
                                                       getattr(config, "intermediate_size", 4 * hidden), kv_size))


class ScoringRun:
    """One call's loglikelihood requests through the engine, and what they cost."""

    def __init__(self, lm: Any, requests: Sequence[tuple], tasks: Sequence[str] | None, request_type: str,
                 on_scored: Callable[[int, tuple[float, bool]], None] | None, on_batch_done: Callable[[], None]):
        from lm_eval.models.vllm_causallms import SamplingParams

        self.lm, self.engine, self.request_type = lm, lm.engine, request_type
        self.on_scored, self.on_batch_done = on_scored, on_batch_done
        self.prepared = [truncate_for_scoring(ctx, cont, lm.max_length) for _, ctx, cont in requests]
        self.keys = [tuple(tokens[:context_len]) for tokens, context_len in self.prepared]
        self.tasks = list(tasks) if tasks is not None else ["unknown"] * len(requests)
        self.shared = uses_prefix_cache(lm)
        self.block = getattr(self.engine, "block_size", 0) or 0
        self.results: list[Any] = [None] * len(requests)
        self.report = lm.cost_report
        self._sampling_params = SamplingParams
        self._params_memo: dict[tuple, Any] = {}

    def reads_cache(self, index: int) -> bool:
        return self.shared and reusable_blocks(self.prepared[index][1], self.block) >= 1

    def params(self, index: int, *, reads_cache: bool, probe_tokens: tuple[int, ...] = ()) -> Any:
        """Prompt logprobs of one token per position, from the scored position on (where the runner
        honours it; ``prompt_logprobs.py``), with or without the prefix cache; a probe also asks for
        the logprobs of the tokens that follow its prompt in the requests it repairs."""
        from lm_eval_ext.vllm.prompt_logprobs import SCORED_FROM

        start = first_scored_position(self.prepared[index][1])
        memo = (reads_cache, start, probe_tokens)
        if memo not in self._params_memo:
            self._params_memo[memo] = self._sampling_params(
                temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False, extra_args={SCORED_FROM: start},
                skip_reading_prefix_cache=not reads_cache, logprob_token_ids=list(probe_tokens) or None)
        return self._params_memo[memo]

    # ---- the phases ---------------------------------------------------------------------------
    def run(self) -> list[tuple[float, bool]]:
        order = grouped_order(self.keys)
        self.count_requests(order)
        self.warm_up(order)
        own = self.call("scoring", [(i, self.prepared[i][0], self.params(i, reads_cache=self.reads_cache(i)))
                                    for i in order], finish=True)
        gaps = [i for i in order if self.results[i] is None]
        leftover = self.repair(gaps, dict(zip(order, own)))
        if leftover:
            logger.info("vllm_ext: %d request(s) had scored positions served from the prefix cache that probes could "
                        "not cover (blocks cached by another request past this context's end); scored again without it",
                        len(leftover))
        for index in leftover:
            self.report.count_fallbacks(self.tasks[index], self.request_type, CONTINUATION_CACHED)
        self.call("fallback", [(i, self.prepared[i][0], self.params(i, reads_cache=False)) for i in leftover],
                  finish=True)
        return self.results

    def warm_up(self, order: list[int]) -> None:
        """One engine call with the whole blocks of each context worth warming (:func:`warm_up_pays`)."""
        if not self.shared:
            return
        from lm_eval.models.vllm_causallms import SamplingParams

        costs, firsts = warmup_costs(self.lm), {}
        for index in order:
            if self.keys[index] not in firsts and warm_up_pays(self.prepared[index][1], self.block, costs):
                firsts[self.keys[index]] = index
        warm = SamplingParams(temperature=0, max_tokens=1, detokenize=False)
        calls = [(i, warm_prompt(self.keys[i], self.block), warm) for i in firsts.values()]
        for (index, prompt, _), output in zip(calls, self.call("warmup", calls)):
            self.report.count(self.tasks[index], self.request_type, warmup_requests=1,
                              warmup_tokens=len(prompt) - output.num_cached_tokens)

    def repair(self, gaps: list[int], own: dict[int, Any]) -> list[int]:
        """Probes for the requests whose own output lacks scored positions (:func:`probe_requests`);
        returns those still uncovered."""
        needs = [(index, self.prepared[index][0][:length], self.prepared[index][0][length])
                 for index in gaps if self.reads_cache(index)
                 for length in probe_lengths(self.prepared[index][1], own[index].num_cached_tokens, self.block)]
        probes = probe_requests(needs)
        calls = [(p.first, list(p.prompt), self.params(p.first, reads_cache=True, probe_tokens=tuple(p.targets)))
                 for p in probes]
        found: dict[int, list[Probe]] = {}
        for probe, output in zip(probes, self.call("scoring", calls)):
            for index in dict.fromkeys(probe.repairs):
                found.setdefault(index, []).append(Probe(len(probe.prompt), output))
            self.report.count(self.tasks[probe.first], self.request_type, probe_requests=1,
                              probe_tokens=len(probe.prompt) - output.num_cached_tokens)
        return [index for index in gaps if not self.finish(index, own[index], found.get(index, ()))]

    def finish(self, index: int, output: Any, probes: Sequence[Probe] = ()) -> bool:
        """Parse and report request ``index`` if every position it scores is there; else False."""
        from lm_eval.models.vllm_causallms import VLLM

        tokens, context_len = self.prepared[index]
        if probes or uncovered(context_len, output.num_cached_tokens):
            merged = merged_prompt_logprobs(tokens, context_len, output, probes)
            if merged is None:
                return False
            output = _Merged(merged)
        self.results[index] = answer = VLLM._parse_logprobs(tokens=tokens, outputs=output, ctxlen=context_len)
        if self.on_scored is not None:
            self.on_scored(index, answer)
        return True

    # ---- engine calls and their costs ----------------------------------------------------------
    def call(self, phase: str, requests: list[tuple[int, list[int], Any]], *, finish: bool = False) -> list[Any]:
        """One engine call of ``(request index, prompt, params)``; the outputs in that order. Each
        engine batch is handed on as it arrives (``finish``: each answer parsed and reported then),
        and what it computed and read from the cache is counted for its request's task."""
        if not requests:
            return []
        indices = [index for index, _, _ in requests]
        prompts = [prompt for _, prompt, _ in requests]
        keys = [self.keys[index] for index in indices]
        costs = group_cost_tokens(prompts, keys, [self.prepared[i][1] for i in indices], self.block)
        outputs: list[Any] = [None] * len(requests)
        computed: Counter[str] = Counter()
        started_s = time.perf_counter()
        for batch in self.engine.iter_batches(prompts, [params for _, _, params in requests], keys, costs):
            for position, output in batch:
                outputs[position] = output
                task, new_tokens = self.tasks[indices[position]], len(prompts[position]) - output.num_cached_tokens
                computed[task] += new_tokens
                self.report.count(task, self.request_type, tokens_computed=new_tokens,
                                  cached_tokens=output.num_cached_tokens)
                if finish:
                    self.finish(indices[position], output)
            self.on_batch_done()
        self.report.add_phase(self.request_type, phase, time.perf_counter() - started_s, computed)
        return outputs

    def count_requests(self, order: list[int]) -> None:
        """Per task: requests, the tokens stock computes (what unshared scoring computes: also the
        ``useful_tokens`` of hf's report), and the minimum."""
        least = minimal_tokens([self.prepared[i][0] for i in order], [self.prepared[i][1] for i in order],
                               self.block)
        for index, minimum in zip(order, least):
            tokens, context_len = self.prepared[index]
            self.report.count(self.tasks[index], self.request_type, num_requests=1, stock_tokens=len(tokens),
                              useful_tokens=len(tokens), minimal_tokens=minimum)
            if not self.shared and reusable_blocks(context_len, self.block) >= 1:
                self.report.count_fallbacks(self.tasks[index], self.request_type, CACHE_OFF)
        for task in set(self.tasks):
            self.report.entry(task, self.request_type).block_size = self.block or None


def score_requests(
    lm: Any, requests: Sequence[tuple], on_scored: Callable[[int, tuple[float, bool]], None] | None = None,
    on_batch_done: Callable[[], None] = lambda: None, *, tasks: Sequence[str] | None = None,
    request_type: str = "loglikelihood",
) -> list[tuple[float, bool]]:
    """``requests``: ``(cache_key, context_tokens, continuation_tokens)`` as lm-eval builds them;
    ``on_scored(index, answer)`` is called as each answer arrives, ``on_batch_done()`` after each
    batch the engine returns; ``tasks[i]``: request ``i``'s task in the cost report."""
    if not requests:  # nothing to compute: never start an engine
        return []
    num_truncated = sum(len(ctx) + len(cont) > lm.max_length - 1 for _, ctx, cont in requests)
    if num_truncated:
        logger.warning("vllm_ext: %d request(s) longer than max_length-1=%d; contexts truncated on the left",
                       num_truncated, lm.max_length - 1)
    return ScoringRun(lm, requests, tasks, request_type, on_scored, on_batch_done).run()


def chunked(order: list[int], batch_size: int | str) -> list[list[int]]:
    """``batch_size`` requests per engine call; ``auto``: all at once (vLLM schedules them)."""
    size = len(order) if batch_size == "auto" else int(batch_size)
    return [order[start:start + size] for start in range(0, len(order), max(size, 1))]


def rolling_loglikelihoods(lm: Any, call: Any, on_windows: Callable[[list, list[int]], None] | None = None) -> None:
    """Stock ``VLLM.loglikelihood_rolling``: disjoint windows of ``max_length - 2`` tokens (1 for
    context, 1 for generation), each document's window scores summed in window order; a document is
    reported as soon as its last window is scored. ``on_windows(windows, owner)`` sees them first."""
    from lm_eval_ext.backend.lm_requests import RollingDocuments, rolling_windows

    documents = RollingDocuments([rolling_windows(lm, instance.args[0], lm.max_length - 2)
                                  for instance in call.requests], on_total=call.result)
    if on_windows is not None:
        on_windows(documents.windows, documents.owner)
    documents.report_empty()
    tasks = [call.task_of(doc) for doc in documents.owner]
    score_requests(lm, [(None, *window) for window in documents.windows], documents.scored, call.batch_done,
                   tasks=tasks, request_type=call.request_type.value)


class _Merged:
    """What stock's ``_parse_logprobs`` reads of an output: its ``prompt_logprobs``."""

    def __init__(self, prompt_logprobs: list) -> None:
        self.prompt_logprobs = prompt_logprobs
