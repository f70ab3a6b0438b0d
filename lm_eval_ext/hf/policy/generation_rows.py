"""PURE: how many rows the continuous generation loop keeps live, and what each task's rows cost.

Rows: the generation budget counts KV held, in token columns. Each row holds a region sized to its
own prompt (after its family's shared prefix) plus ``max_new_tokens`` (allocated whole, so no row
can run out mid-generation), and the rows share one arena of at most the budget
(:func:`generation_pool`): short rows leave room for more of them, where slots of one size would
pad every row to the longest. Example: a 12,288-token budget and GSM8K 5-shot (own prompts of
~700-1,450 tokens, 256 new tokens: ~1,300-column rows) -> ~9 rows at once; ``gsm8k_cot`` (an 8-shot
prefix shared, ~60-token questions, 256 new tokens) -> 12,288 // 316 = 38 rows. A decode step reads
every weight once whatever the rows, so more rows are nearly free until the step turns
compute-bound (:data:`MAX_GENERATION_ROWS`). With ``max_batch_tokens=off`` the rows are lm-eval's
``batch_size`` (stock's batching), in an arena that holds any of them.

Cost: a row's *useful* tokens are what stock computes for it at ``batch_size=1`` (its whole prompt
and its generated tokens); its *computed* tokens are its own prompt, its generated tokens and its
share of its family's prefix (computed once for all of them).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any

#: most rows decoding together: past this a decode step is compute-bound on the project's CPU
#: (a step's linear layers run rows x 1 tokens) and every extra row costs its full share
MAX_GENERATION_ROWS = 64


@dataclass(frozen=True)
class GenerationPool:
    rows: int
    """most rows live at once"""
    arena_tokens: int
    """KV columns allocated for the rows' own tokens"""
    typical_rows: int
    """rows the arena holds at once at the call's mean row (what a time estimate assumes)"""


def generation_pool(budget_tokens: int | None, max_batch_requests: int | None,
                    row_tokens: Sequence[int]) -> GenerationPool:
    """The pool for rows of ``row_tokens`` columns each (own prompt + ``max_new_tokens``).

    >>> generation_pool(12288, None, [1300] * 32), generation_pool(None, 2, [1300, 700, 1000])
    (GenerationPool(rows=32, arena_tokens=12288, typical_rows=9), GenerationPool(rows=2, arena_tokens=2300, typical_rows=2))
    >>> generation_pool(10**6, None, [65] * 128), generation_pool(100, None, [300, 20])
    (GenerationPool(rows=64, arena_tokens=4160, typical_rows=64), GenerationPool(rows=2, arena_tokens=300, typical_rows=1))
    """
    widest = max(row_tokens)
    if budget_tokens is None:
        rows = max(1, min(max_batch_requests or 1, MAX_GENERATION_ROWS, len(row_tokens)))
        return GenerationPool(rows, sum(sorted(row_tokens, reverse=True)[:rows]), rows)
    rows = max(1, min(MAX_GENERATION_ROWS, len(row_tokens)))
    most = sum(sorted(row_tokens, reverse=True)[:rows])  # no more than the widest rows could hold at once
    arena = max(widest, min(budget_tokens, most))
    typical = max(1, min(rows, int(arena * len(row_tokens) // sum(row_tokens))))
    return GenerationPool(rows, arena, typical)


class GenerationLedger:
    """Per-task useful and computed tokens of one call's rows, filled as rows finish."""

    def __init__(self, task_of: Mapping[int, str], prompt_tokens: Mapping[int, int],
                 family_of: Mapping[int, int], family_prefix_tokens: Sequence[int]) -> None:
        self.task_of, self.prompt_tokens = task_of, prompt_tokens
        self.prefix_tokens = {i: family_prefix_tokens[f] for i, f in family_of.items()}
        family_rows = Counter(family_of.values())
        self._prefix_share = {i: family_prefix_tokens[f] / family_rows[f] for i, f in family_of.items()}
        self.useful: Counter = Counter()
        self.computed: Counter = Counter()
        self.rows: Counter = Counter()

    def finished(self, index: int, generated_tokens: int) -> None:
        task = self.task_of[index]
        own = self.prompt_tokens[index] - self.prefix_tokens[index]
        self.useful[task] += self.prompt_tokens[index] + generated_tokens
        self.computed[task] += own + generated_tokens + self._prefix_share[index]
        self.rows[task] += 1

    def report(self, cost_report: Any, request_type: str, *, wall_s: float, stats: Any) -> None:
        """One entry per task: the call's wall time and tokens shared by computed tokens."""
        total = sum(self.computed.values()) or 1.0
        for task, computed in self.computed.items():
            share = computed / total
            cost_report.add_generation(
                task, request_type, num_requests=self.rows[task], useful_tokens=self.useful[task],
                computed_tokens=computed, wall_s=wall_s * share, prefill_tokens=stats.prefill_tokens * share,
                decode_tokens=stats.decode_tokens * share, decode_steps=stats.decode_steps,
                live_row_steps=stats.live_row_steps,
            )
