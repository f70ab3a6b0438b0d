"""EDGE: the in-process vLLM engine and what every ``vllm_ext`` engine returns.

An engine answers ``run(prompts, params, group_keys)`` -- token-id prompts with one
``SamplingParams`` each -- with :class:`EngineOutput` objects in prompt order, and
``iter_batches`` yields lists of ``(index, output)`` pairs as results arrive, one list per finished
unit of work (an engine step, a replica's message, an HTTP response): the request cache stores
each list in one transaction, so a killed run keeps everything that had arrived.
:class:`EngineOutput` is the small, picklable part of vLLM's ``RequestOutput`` that stock lm-eval's
parsing reads (``prompt_logprobs`` and ``outputs[0].text``), so replica processes and the HTTP
client return the same thing as the in-process engine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


logger = logging.getLogger(__name__)

_engine_starts_lock = threading.Lock()
_engine_starts = 0


def count_engine_start(where: str) -> int:
    """Record one vLLM engine construction (a full model load); returns the process-wide total."""
    global _engine_starts
    with _engine_starts_lock:
        _engine_starts += 1
        total = _engine_starts
    logger.info("vllm_ext: engine start #%d (%s)", total, where)
    return total


def engine_starts_so_far() -> int:
    """Engines this process has started (replicas are counted here when they report ready)."""
    with _engine_starts_lock:
        return _engine_starts


@dataclass(frozen=True)
class GeneratedText:
    text: str


@dataclass(frozen=True)
class EngineOutput:
    """``prompt_logprobs[i]``: ``{token_id: logprob}`` for prompt position i (None at 0, where not
    requested, and before the position scoring reads from); ``outputs[0].text``: the generated text."""

    prompt_logprobs: list[dict[int, float] | None] | None
    outputs: tuple[GeneratedText, ...] = field(default=(GeneratedText(""),))
    num_cached_tokens: int = 0
    """Prompt tokens vLLM read from its prefix cache instead of computing (a multiple of its block size)."""
    sample_logprobs: dict[int, float] | None = None
    """``{token_id: logprob}`` at the first generated position, when logprobs were asked for."""
    num_generated_tokens: int = 0


def compact_output(request_output: Any, scored_from: int = 0) -> EngineOutput:
    """vLLM ``RequestOutput`` -> :class:`EngineOutput` (floats instead of ``Logprob`` objects).
    Prompt logprobs before position ``scored_from`` are dropped (vllm_ext's runner does not return
    them; where vLLM's own does, nothing reads them, and a long few-shot context would otherwise be
    copied, and sent from a replica, position by position)."""
    from lm_eval_ext.vllm.prompt_logprobs import aligned_prompt_logprobs

    prompt_logprobs = None
    if request_output.prompt_logprobs is not None:
        rows = aligned_prompt_logprobs(request_output.prompt_logprobs, len(request_output.prompt_token_ids))
        prompt_logprobs = [
            None if position is None or index <= scored_from
            else {token: float(lp.logprob) for token, lp in position.items()}
            for index, position in enumerate(rows)
        ]
    first = request_output.outputs[0] if request_output.outputs else None
    sample_logprobs = None
    if first is not None and first.logprobs:
        sample_logprobs = {token: float(lp.logprob) for token, lp in first.logprobs[0].items()}
    texts = tuple(GeneratedText(c.text or "") for c in request_output.outputs) or (GeneratedText(""),)
    return EngineOutput(prompt_logprobs, texts, int(getattr(request_output, "num_cached_tokens", 0) or 0),
                        sample_logprobs, len(first.token_ids) if first is not None else 0)


def build_llm(kwargs: dict, where: str) -> Any:
    from vllm import LLM

    llm = LLM(**kwargs)
    count_engine_start(where)
    return llm


def shutdown_llm(llm: Any) -> None:
    """Stop an ``LLM``'s engine core now; several engines in one process need this (see
    docs/upstream.md), and garbage collection alone leaves its workers and sockets behind."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


def iter_finished(llm: Any, prompts: Sequence[list[int]], params: Sequence[Any]) -> Iterator[list[tuple[int, EngineOutput]]]:
    """What ``llm.generate`` computes, yielded step by step: the requests each engine step finished.

    Same scheduling as ``generate`` (``enqueue`` then the engine's own step loop, as vLLM's
    ``wait_for_completion`` runs it); requests still queued when the caller stops are aborted.
    """
    from vllm import TokensPrompt

    from lm_eval_ext.vllm.prompt_logprobs import scored_from

    params = list(params)
    internal_ids = llm.enqueue(
        [TokensPrompt(prompt_token_ids=list(p)) for p in prompts], sampling_params=params, use_tqdm=False
    )
    # enqueue returns vLLM's internal ids, "<counter>-<8 random chars>"; outputs carry "<counter>"
    pending = {rid.split("-", 1)[0]: (index, rid) for index, rid in enumerate(internal_ids)}
    engine = llm.llm_engine
    try:
        while engine.has_unfinished_requests():
            finished = []
            for output in engine.step():
                if output.finished:
                    index = pending.pop(output.request_id)[0]
                    finished.append((index, compact_output(output, scored_from(params[index]))))
            if finished:
                yield finished
    finally:
        if pending:
            engine.abort_request([rid for _, rid in pending.values()], internal=True)


def collect(batches: Iterator[list[tuple[int, EngineOutput]]], num_prompts: int) -> list[EngineOutput]:
    """``iter_batches`` output -> outputs in prompt order."""
    results: list[Any] = [None] * num_prompts
    for batch in batches:
        for index, output in batch:
            results[index] = output
    return results


class InProcessEngine:
    """One ``vllm.LLM`` in this process (tensor parallel inside it when TP > 1)."""

    kind = "in_process"
    #: loglikelihoods may read vLLM's prefix cache (an item's choices reuse its context's blocks)
    supports_prefix_scoring = True

    def __init__(self, engine_args: dict) -> None:
        from lm_eval_ext.vllm.prompt_logprobs import install

        self._llm = build_llm(engine_args, where="in-process")
        self.num_engine_starts = 1
        self.max_model_len: int = self._llm.llm_engine.model_config.max_model_len
        self.block_size: int = self._llm.llm_engine.vllm_config.cache_config.block_size
        #: prompt logprobs are computed only from each request's scored position on (prompt_logprobs.py)
        self.scores_from_start: bool = install(self._llm)

    def iter_batches(
        self, prompts: Sequence[list[int]], params: Sequence[Any], group_keys: Sequence[Hashable] | None = None,
        costs_tokens: Sequence[int] | None = None,
    ) -> Iterator[list[tuple[int, EngineOutput]]]:
        """``group_keys`` and ``costs_tokens`` place requests on replicas (one engine here: unused)."""
        yield from iter_finished(self._llm, prompts, params)

    def run(self, prompts, params, group_keys=None) -> list[EngineOutput]:
        return collect(self.iter_batches(prompts, params, group_keys), len(prompts))

    def close(self) -> None:
        if self._llm is not None:
            shutdown_llm(self._llm)
            self._llm = None
