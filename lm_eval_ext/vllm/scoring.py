"""Loglikelihood scoring for ``vllm_ext``: stock truncation and parsing, engine-friendly order.

Equal to stock ``VLLM._loglikelihood_tokens`` and ``VLLM.loglikelihood_rolling`` request by request
(same kept tokens, same context length, same windows, same ``_parse_logprobs``, same summation
order); what differs is the order: the choices of one multiple-choice item (same context tokens)
are sent together and kept on one replica, and each result is reported as soon as the engine
returns it (a rolling document: as soon as its last window does), so the request cache stores it then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)


def truncate_for_scoring(context: Sequence[int], continuation: Sequence[int], max_length: int) -> tuple[list[int], int]:
    """The tokens vLLM scores and how many of them are context, as stock does it: keep the last
    ``max_length - 1`` tokens (vLLM needs room for one generated token). Example: context of 6,
    continuation of 3, max_length 8 -> last 7 tokens, context length 4."""
    max_context_tokens = max_length - 1
    tokens = (list(context) + list(continuation))[-max_context_tokens:]
    context_len = len(context) - max(0, len(context) + len(continuation) - max_context_tokens)
    return tokens, context_len


def grouped_order(group_keys: Sequence[Any]) -> list[int]:
    """Indices with equal keys adjacent, groups in order of first appearance (stable)."""
    first_seen: dict[Any, int] = {}
    for index, key in enumerate(group_keys):
        first_seen.setdefault(key, index)
    return sorted(range(len(group_keys)), key=lambda i: (first_seen[group_keys[i]], i))


def all_continuation_computed(output: Any, context_len: int) -> bool:
    """Whether vLLM computed every position whose logprob scoring reads. The logprob of token ``j``
    comes from position ``j - 1``, so positions ``context_len - 1`` onwards must not have come from
    the prefix cache. Example: block size 128, a 128-token context fully cached -> False (the first
    continuation token's logprob was never computed); a 138-token context, 128 cached -> True."""
    return output.num_cached_tokens <= context_len - 1


def reusable_blocks(context_len: int, block_size: int) -> int:
    """Whole KV blocks of a context a choice can read from the cache: position ``context_len - 1``
    predicts the first continuation token, so it must be computed. Example: block 32, 64 -> 1."""
    return (context_len - 1) // max(block_size, 1)


def worth_warming(keys: Sequence[Any], context_lens: Sequence[int], block_size: int) -> dict[Any, bool]:
    """Per context: whether computing it once first saves work. Only whole KV blocks are cached, and
    position ``context_len - 1`` must be computed, so a context reuses ``(context_len - 1) // block``
    blocks; with one choice (or no whole block) the warm-up would only add work. Example: block 128,
    4 choices of a 600-token context -> warm (4 blocks reused by each choice); a 79-token context -> no."""
    counts: dict[Any, int] = {}
    lengths: dict[Any, int] = {}
    for key, length in zip(keys, context_lens):
        counts[key] = counts.get(key, 0) + 1
        lengths[key] = length
    return {key: counts[key] > 1 and reusable_blocks(lengths[key], block_size) >= 1 for key in counts}


def warm_prompt(context: Sequence[int], block_size: int) -> list[int]:
    """What a context's warm-up computes: the whole KV blocks its choices may reuse, no more.
    vLLM caches whole blocks only, so warming the context's tail would be computed for nothing;
    and a warm-up that cached a context ending on a block boundary whole would cache the position
    that predicts the first continuation token, which must be computed (every choice would be
    scored again). Example: block 32, a 70-token context -> its first 64 tokens; 64 tokens -> 32."""
    return list(context[: block_size * reusable_blocks(len(context), block_size)])


def uses_prefix_cache(lm: Any) -> bool:
    return lm.ext_config.scores_with_prefix_cache and getattr(lm.engine, "supports_prefix_warmup", False)


def score_requests(
    lm: Any, requests: Sequence[tuple], on_scored: Callable[[int, tuple[float, bool]], None] | None = None,
    on_batch_done: Callable[[], None] = lambda: None,
) -> list[tuple[float, bool]]:
    """``requests``: ``(cache_key, context_tokens, continuation_tokens)`` as lm-eval builds them;
    ``on_scored(index, answer)`` is called as each answer arrives, ``on_batch_done()`` after each
    batch the engine returns.

    With ``score_with_prefix_cache`` the whole KV blocks of each distinct context are computed once
    first (:func:`warm_prompt`; they then sit in vLLM's prefix cache) and the choices ask for prompt logprobs with
    ``skip_reading_prefix_cache=False``, so only their continuations are computed; a request whose
    continuation positions came from the cache (:func:`all_continuation_computed`: blocks another
    request cached past this context's end, e.g. a choice sharing its first token with another
    choice) is scored again the stock way (prefix cache skipped)."""
    from lm_eval.models.vllm_causallms import VLLM, SamplingParams

    if not requests:  # nothing to compute: never start an engine (uses_prefix_cache would)
        return []
    prepared = [truncate_for_scoring(ctx, cont, lm.max_length) for _, ctx, cont in requests]
    num_truncated = sum(len(ctx) + len(cont) > lm.max_length - 1 for _, ctx, cont in requests)
    if num_truncated:
        logger.warning("vllm_ext: %d request(s) longer than max_length-1=%d; contexts truncated on the left",
                       num_truncated, lm.max_length - 1)
    keys = [tuple(ctx) for _, ctx, _ in requests]
    order = grouped_order(keys)
    stock = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False)
    shared = uses_prefix_cache(lm)
    params = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False,
                            skip_reading_prefix_cache=False) if shared else stock
    results: list[Any] = [None] * len(requests)
    recompute: list[int] = []

    def run(chunk: list[int], chunk_params: Any, warm: dict | None) -> None:
        if not chunk:
            return
        prompts = [prepared[i][0] for i in chunk]
        for batch in lm.engine.iter_batches(prompts, [chunk_params] * len(chunk), [keys[i] for i in chunk], warm):
            for position, output in batch:
                index = chunk[position]
                tokens, context_len = prepared[index]
                if chunk_params is params and shared and not all_continuation_computed(output, context_len):
                    recompute.append(index)
                    continue
                results[index] = answer = VLLM._parse_logprobs(tokens=tokens, outputs=output, ctxlen=context_len)
                if on_scored is not None:
                    on_scored(index, answer)
            on_batch_done()

    block = lm.engine.block_size if shared else 0
    for chunk in chunked(order, lm.batch_size):
        if not shared:
            run(chunk, stock, None)
            continue
        reusing = worth_warming([keys[i] for i in chunk], [prepared[i][1] for i in chunk], block)
        run([i for i in chunk if not reusing[keys[i]]], stock, None)
        chunk = [i for i in chunk if reusing[keys[i]]]
        run(chunk, params, {keys[i]: warm_prompt(prepared[i][0][:prepared[i][1]], block) for i in chunk})
    if recompute:
        logger.info("vllm_ext: %d request(s) had continuation positions served from the prefix cache "
                    "(blocks cached past the context's end); scored again without it", len(recompute))
        for chunk in chunked(sorted(recompute, key=order.index), lm.batch_size):
            run(chunk, stock, None)
    return results


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
    score_requests(lm, [(None, *window) for window in documents.windows], documents.scored, call.batch_done)
