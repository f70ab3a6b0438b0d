"""The prompt tokens ``vllm_ext`` has vLLM compute for one call, per task, the way its scorer asks.

Counted with the scorer's own rules (:mod:`lm_eval_ext.vllm.scoring`: stock truncation, items
grouped by context, ``batch_size`` requests per engine call, :func:`~lm_eval_ext.vllm.scoring.worth_warming`,
:func:`~lm_eval_ext.vllm.scoring.warm_prompt`) over a model of vLLM's prefix cache: whole blocks of
``block_size`` tokens, keyed by the chain of blocks before them; a prompt reads the longest chain
already cached (never its last token: vLLM always computes at least one position) and leaves its
own whole blocks cached. Which prompts may read the cache is the scorer's choice:

- a context worth warming: its warm prompt once, then each choice with the prefix cache read; a
  choice whose continuation positions would come from the cache is scored again the stock way
  (the scorer's fallback) and counts both times;
- every other scoring request (and every rolling window): stock, the whole prompt computed;
- generation: prompts read the prefix cache when ``enable_prefix_caching`` is on (vLLM's default),
  in stock's order (longest first); decode: one token per generated token after the first.

The cache is taken as large enough to hold what a call computes (no eviction): with little KV
space the count is a lower bound. Not PURE only because it names the scorer's helpers, which live
beside vLLM glue; it imports no vLLM.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from lm_eval_ext.backend.work import TokenCount
from lm_eval_ext.vllm.scoring import chunked, grouped_order, truncate_for_scoring, warm_prompt, worth_warming

#: vLLM's KV block on GPUs when ``block_size`` is not set
DEFAULT_BLOCK_TOKENS = 16


class PrefixCache:
    """vLLM's automatic prefix cache, as token counts: which whole blocks are cached."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._blocks: dict[tuple[int, tuple[int, ...]], int] = {}

    def cached_tokens(self, prompt: Sequence[int]) -> int:
        """Tokens of ``prompt`` served from the cache (whole blocks, the last token never)."""
        parent, cached = -1, 0
        for start in range(0, len(prompt) - 1 - self.block_size + 1, self.block_size):
            block = self._blocks.get((parent, tuple(prompt[start:start + self.block_size])))
            if block is None:
                break
            parent, cached = block, start + self.block_size
        return cached

    def insert(self, prompt: Sequence[int]) -> None:
        parent = -1
        for start in range(0, len(prompt) - self.block_size + 1, self.block_size):
            key = (parent, tuple(prompt[start:start + self.block_size]))
            parent = self._blocks.setdefault(key, len(self._blocks))

    def compute(self, prompt: Sequence[int], *, read: bool) -> tuple[int, int]:
        """(tokens computed, tokens read from the cache) of one prompt; its blocks are cached after."""
        cached = self.cached_tokens(prompt) if read else 0
        self.insert(prompt)
        return len(prompt) - cached, cached


def count_vllm_scoring(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], tasks: Sequence[str], *,
                       max_length: int, block_size: int, batch_size: Any, prefix_cache_scoring: bool
                       ) -> dict[str, TokenCount]:
    """Per task: requests, context and scored tokens, stock and computed prompt tokens of one call
    of ``(context tokens, continuation tokens)`` pairs (``vllm/scoring.py::score_requests``)."""
    counts: dict[str, TokenCount] = defaultdict(TokenCount)
    prepared = [truncate_for_scoring(ctx, cont, max_length) for ctx, cont in pairs]
    for (tokens, context_len), (_, cont), task in zip(prepared, pairs, tasks):
        count = counts[task]
        count.num_requests += 1
        count.context_tokens += context_len
        count.continuation_tokens += len(cont)
        count.stock_tokens += len(tokens)
    cache = PrefixCache(block_size)
    keys = [tuple(ctx) for ctx, _ in pairs]

    def computed(index: int, read: bool) -> int:
        tokens, context_len = prepared[index]
        own, cached = cache.compute(tokens, read=read)
        if read and cached > context_len - 1:  # continuation positions came from the cache: stock again
            own += len(tokens)
        return own

    for chunk in chunked(grouped_order(keys), batch_size):
        if not prefix_cache_scoring:
            for i in chunk:
                counts[tasks[i]].computed_tokens += computed(i, read=False)
            continue
        reusing = worth_warming([keys[i] for i in chunk], [prepared[i][1] for i in chunk], block_size)
        for i in (i for i in chunk if not reusing[keys[i]]):
            counts[tasks[i]].computed_tokens += computed(i, read=False)
        warmed = set()
        for i in (i for i in chunk if reusing[keys[i]]):
            if keys[i] not in warmed:  # the warm-up: once per context, itself reading earlier blocks
                warmed.add(keys[i])
                own, _ = cache.compute(warm_prompt(prepared[i][0][:prepared[i][1]], block_size), read=True)
                counts[tasks[i]].computed_tokens += own
                counts[tasks[i]].shared_prefix_tokens += own
        for i in (i for i in chunk if reusing[keys[i]]):
            counts[tasks[i]].computed_tokens += computed(i, read=True)
    for count in counts.values():
        count.close()
    return dict(counts)


def count_vllm_generation(prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], tasks: Sequence[str],
                          generated: Sequence[float], *, block_size: int, prefix_caching: bool
                          ) -> dict[str, TokenCount]:
    """Per task: prompts, budget, prefill (after the prefix cache) and decode tokens at the central
    length of each request (clipped to ``1 .. max_new_tokens``) and at both ends."""
    counts: dict[str, TokenCount] = defaultdict(TokenCount)
    cache = PrefixCache(block_size)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # stock's Collator: longest first
    for i in order:
        own, _ = cache.compute(prompts[i], read=prefix_caching)
        counts[tasks[i]].add_generation(len(prompts[i]), own, max_new_tokens[i], generated[i])
    for count in counts.values():
        count.close()
    return dict(counts)


def scoring_settings(lm: Any) -> dict[str, Any]:
    """What ``score_requests`` decides with, read from a ``VllmExtLM`` (its planned block size, else
    vLLM's default; its ``batch_size``; whether choices read the prefix cache)."""
    block = getattr(lm.sizes, "block_size", None) or DEFAULT_BLOCK_TOKENS
    return {"block_size": int(block), "batch_size": lm.batch_size,
            "prefix_cache_scoring": lm.ext_config.scores_with_prefix_cache and not lm.ext_config.is_server_mode}


def documents_as_requests(counts: dict[str, TokenCount], call_or_instances: Any) -> dict[str, TokenCount]:
    """A rolling request is a document, however many windows it has (``requests``: a Call or Instances)."""
    instances = getattr(call_or_instances, "requests", call_or_instances)
    per_task: dict[str, int] = defaultdict(int)
    for instance in instances:
        per_task[getattr(instance, "task_name", None) or "unknown"] += 1
    for task, count in counts.items():
        count.num_requests = per_task[task]
    return counts
