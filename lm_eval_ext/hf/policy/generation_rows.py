"""PURE: how many rows the continuous generation loop keeps live, and what each task's rows cost.

Rows: the generation budget counts KV held, ``rows x columns`` tokens, where a row's columns are
its prompt after its family's shared prefix plus ``max_new_tokens`` (a slot is allocated whole, so
no row can run out mid-generation). Example: a 12,288-token budget and GSM8K 5-shot (~1,000-token
prompts of their own, 256 new tokens) -> 12,288 // 1,256 = 9 rows (the benchmark's 32 documents,
whose longest own prompt is 1,439 tokens: 7); ``gsm8k_cot`` (an 8-shot prefix shared, ~60-token
questions) -> 12,288 // 316 = 38 rows. A decode step reads every weight once whatever the rows, so
more rows are nearly free until the step turns compute-bound (:data:`MAX_GENERATION_ROWS`).
With ``max_batch_tokens=off`` the rows are lm-eval's ``batch_size`` (stock's batching).

Cost: a row's *useful* tokens are what stock computes for it at ``batch_size=1`` (its whole prompt
and its generated tokens); its *computed* tokens are its own prompt, its generated tokens and its
share of its family's prefix (computed once for all of them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

#: most rows decoding together: past this a decode step is compute-bound on the project's CPU
#: (a step's linear layers run rows x 1 tokens) and every extra row costs its full share
MAX_GENERATION_ROWS = 64


def generation_rows(budget_tokens: int | None, max_batch_requests: int | None, columns: int,
                    num_requests: int) -> int:
    """Rows that fit ``budget_tokens`` at ``columns`` each (else lm-eval's ``batch_size``), at most
    :data:`MAX_GENERATION_ROWS` and the requests.

    >>> generation_rows(16384, None, 1256, 32), generation_rows(None, 1, 1256, 32), generation_rows(10**6, None, 65, 128)
    (13, 1, 64)
    """
    if budget_tokens is not None:
        rows = budget_tokens // max(1, columns)
    else:
        rows = max_batch_requests or 1
    return max(1, min(rows, MAX_GENERATION_ROWS, num_requests))


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
