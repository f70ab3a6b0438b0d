"""The prompt tokens ``vllm_ext`` has vLLM compute for one call, per task, the way its scorer asks.

Counted with the scorer's own rules (:mod:`lm_eval_ext.vllm.score_plan`: stock truncation, items
grouped by context, every request of a call in one engine call, probes for scored positions read
from the cache) over a model of vLLM's prefix cache: whole blocks of
``block_size`` tokens, keyed by the chain of blocks before them; a prompt reads the longest chain
already cached (never its last token: vLLM always computes at least one position) and leaves its
own whole blocks cached. Which prompts may read the cache is the scorer's choice:

- a choice whose context has a whole reusable block reads the prefix cache (an item's first choice
  computes the context, the others read it: vllm_ext's runner computes prompt logprobs from the
  scored position only, so it never sends warm-ups); a choice whose scored positions came from the
  cache is repaired by probes of one block each;
- every other scoring request (and every rolling window): the whole prompt computed;
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
from lm_eval_ext.vllm.score_plan import grouped_order, probe_lengths, reusable_blocks, truncate_for_scoring

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
                       max_length: int, block_size: int, prefix_cache_scoring: bool) -> dict[str, TokenCount]:
    """Per task: requests, context and scored tokens, stock and computed prompt tokens of one call
    of ``(context tokens, continuation tokens)`` pairs (``vllm/scoring.py::ScoringRun``: one engine
    call in grouped order)."""
    counts: dict[str, TokenCount] = defaultdict(TokenCount)
    prepared = [truncate_for_scoring(ctx, cont, max_length) for ctx, cont in pairs]
    for (tokens, context_len), (_, cont), task in zip(prepared, pairs, tasks):
        count = counts[task]
        count.num_requests += 1
        count.context_tokens += context_len
        count.continuation_tokens += len(cont)
        count.stock_tokens += len(tokens)
    cache = PrefixCache(block_size)
    keys = [tuple(tokens[:context_len]) for tokens, context_len in prepared]
    for i in grouped_order(keys):
        tokens, context_len = prepared[i]
        reads = prefix_cache_scoring and reusable_blocks(context_len, block_size) >= 1
        own, cached = cache.compute(tokens, read=reads)
        if reads and cached > context_len - 1:  # scored positions read from the cache: one block per probe
            own += len(probe_lengths(context_len, cached, block_size)) * block_size
        counts[tasks[i]].computed_tokens += own
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
    vLLM's default; whether choices read the prefix cache)."""
    block = getattr(lm.sizes, "block_size", None) or DEFAULT_BLOCK_TOKENS
    return {"block_size": int(block),
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
