"""Loglikelihood scoring for ``vllm_ext``: stock truncation and parsing, engine-friendly order.

Equal to stock ``VLLM._loglikelihood_tokens`` request by request (same kept tokens, same context
length, same ``_parse_logprobs``); what differs is the order: the choices of one multiple-choice item
(same context tokens) are sent together and kept on one replica, and each result reaches the
cache hook as soon as its engine call returns instead of after the whole list.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger("lm_eval_ext.vllm")


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


def score_requests(lm: Any, requests: Sequence[tuple]) -> list[tuple[float, bool]]:
    """``requests``: ``(cache_key, context_tokens, continuation_tokens)`` as lm-eval builds them."""
    from lm_eval.models.vllm_causallms import VLLM, SamplingParams

    prepared = [truncate_for_scoring(ctx, cont, lm.max_length) for _, ctx, cont in requests]
    num_truncated = sum(len(ctx) + len(cont) > lm.max_length - 1 for _, ctx, cont in requests)
    if num_truncated:
        logger.warning("vllm_ext: %d request(s) longer than max_length-1=%d; contexts truncated on the left",
                       num_truncated, lm.max_length - 1)
    keys = [tuple(ctx) for _, ctx, _ in requests]
    order = grouped_order(keys)
    params = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False)
    chunk_size = len(order) if lm.batch_size == "auto" else int(lm.batch_size)
    results: list[Any] = [None] * len(requests)
    for start in range(0, len(order), max(chunk_size, 1)):
        chunk = order[start:start + chunk_size]
        prompts = [prepared[i][0] for i in chunk]
        for position, output in lm._engine.iter_run(prompts, [params] * len(chunk), [keys[i] for i in chunk]):
            index = chunk[position]
            tokens, context_len = prepared[index]
            answer = VLLM._parse_logprobs(tokens=tokens, outputs=output, ctxlen=context_len)
            results[index] = answer
            if requests[index][0] is not None:  # rolling windows have none; stock caches them per document
                lm.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
    return results
