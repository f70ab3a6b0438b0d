"""PURE: one run's estimate against what it measured, per task and request type, and what the next
estimate learns from it.

A backend keeps one :class:`Ledger`. Before each call is computed, the backend hands it the call's
counted work (``hf_ext``: ``ScoringEngine.on_counted``, the engine's own packing; ``vllm_ext``: its
scorer's count) and the ledger prices it with the rates the run started with (this model's history on
this hardware, else none: tokens only). After the run it takes what was measured (``hf_ext``: its
cost report's seconds and computed tokens per task; ``vllm_ext``: each call's seconds, split over
the call's tasks by their estimated share) and gives

- :meth:`Ledger.as_dict`: ``{"task/request type": {estimated_tokens, estimated_s, ..., actual_s,
  actual_tokens, error}}`` for the results (``error`` = estimate / actual - 1);
- :meth:`Ledger.history_record`: the rates the run reached, for the next estimate
  (:func:`rates_from_history` reads them back).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lm_eval_ext.estimate.time_model import Rates, estimate_seconds
from lm_eval_ext.backend.work import TokenCount

#: how far a history-based estimate may be off (machine load, another mix of lengths)
HISTORY_SPREAD = (0.85, 1.18)


@dataclass
class LedgerEntry:
    count: TokenCount
    estimated_s: float | None = None
    estimated_s_low: float | None = None
    estimated_s_high: float | None = None
    source: str | None = None
    actual_s: float = 0.0
    actual_tokens: float | None = None
    generated_tokens: float | None = None

    def counted_tokens(self) -> float:
        """The counted tokens at the length actually generated: rates stay in the counter's units
        (the engine's own accounting of generation may differ)."""
        if self.generated_tokens is None:
            return self.count.computed_tokens
        return self.count.prefill_tokens + max(0.0, self.generated_tokens - self.count.num_requests)

    def as_dict(self) -> dict:
        error = None
        if self.estimated_s is not None and self.actual_s > 0:
            error = round(self.estimated_s / self.actual_s - 1, 4)
        rounded = {k: None if v is None else round(v, 3) for k, v in (
            ("estimated_s", self.estimated_s), ("estimated_s_low", self.estimated_s_low),
            ("estimated_s_high", self.estimated_s_high), ("actual_s", self.actual_s))}
        return {"requests": self.count.num_requests, "estimated_tokens": round(self.count.computed_tokens, 1),
                **rounded, "source": self.source,
                "actual_tokens": None if self.actual_tokens is None else round(self.actual_tokens, 1),
                "error": error}


class Ledger:
    def __init__(self, rates: Mapping[str, Rates] | None = None, *, history: Mapping | None = None) -> None:
        self.rates = dict(rates or {})
        self.history = history or {}
        self.entries: dict[tuple[str, str], LedgerEntry] = {}
        self._last_call: dict[str, dict[str, float]] = {}

    def expected_generated(self, task: str, budget: int) -> float:
        """A generation's expected length: this model's mean on the task in the history, else half the budget."""
        known = (self.history.get("tasks", {}).get(task, {}).get("generate_until", {}) or {})
        return float(known.get("generated_per_request") or budget / 2)

    def counted(self, request_type: str, counts: Mapping[str, TokenCount]) -> None:
        """One call's work, before it is computed: priced and added to its tasks' entries."""
        rates = self.rates.get(request_type)
        shares: dict[str, float] = {}
        for task, count in counts.items():
            entry = self.entries.setdefault((task, request_type), LedgerEntry(TokenCount()))
            entry.count.add(count)
            shares[task] = count.computed_tokens
            if rates is None:
                continue
            priced = estimate_seconds(task, count, rates, request_type=request_type)
            entry.estimated_s = (entry.estimated_s or 0.0) + priced.seconds
            entry.estimated_s_low = (entry.estimated_s_low or 0.0) + priced.seconds_low
            entry.estimated_s_high = (entry.estimated_s_high or 0.0) + priced.seconds_high
            entry.source = priced.source
            shares[task] = priced.seconds
        self._last_call[request_type] = shares

    def call_done(self, request_type: str, wall_s: float) -> None:
        """A call's seconds, split over its tasks by their estimated share (backends without a cost report)."""
        shares = self._last_call.pop(request_type, {})
        whole = sum(shares.values())
        for task, share in shares.items():
            self.entries[(task, request_type)].actual_s += wall_s * (share / whole if whole else 1 / len(shares))

    def measured(self, task: str, request_type: str, *, wall_s: float, computed_tokens: float | None,
                 generated_tokens: float | None = None) -> None:
        """What the engine measured for a (task, request type), replacing the call-split seconds."""
        entry = self.entries.setdefault((task, request_type), LedgerEntry(TokenCount()))
        entry.actual_s, entry.actual_tokens, entry.generated_tokens = wall_s, computed_tokens, generated_tokens

    def as_dict(self) -> dict:
        return {f"{task}/{kind}": entry.as_dict() for (task, kind), entry in sorted(self.entries.items())}

    def history_record(self) -> dict:
        """Per request type and per task: computed tokens and seconds (and tokens generated per request)."""
        kinds: dict[str, dict[str, float]] = {}
        tasks: dict[str, dict[str, dict]] = {}
        for (task, kind), entry in self.entries.items():
            tokens = entry.counted_tokens()
            if entry.actual_s <= 0 or tokens <= 0:
                continue
            total = kinds.setdefault(kind, {"computed_tokens": 0.0, "wall_s": 0.0})
            total["computed_tokens"] += tokens
            total["wall_s"] += entry.actual_s
            record = {"computed_tokens": tokens, "wall_s": entry.actual_s, "requests": entry.count.num_requests}
            if entry.generated_tokens is not None and entry.count.num_requests:
                record["generated_per_request"] = entry.generated_tokens / entry.count.num_requests
            tasks.setdefault(task, {})[kind] = record
        return {"request_types": kinds, "tasks": tasks}


def rates_from_history(record: Mapping, request_type: str) -> Rates | None:
    """The rates a remembered run reached for ``request_type`` (None when it ran none)."""
    total = (record.get("request_types") or {}).get(request_type)
    if not total or not total.get("wall_s") or not total.get("computed_tokens"):
        return None
    per_task = {task: kinds[request_type]["wall_s"] / kinds[request_type]["computed_tokens"]
                for task, kinds in (record.get("tasks") or {}).items()
                if request_type in kinds and kinds[request_type].get("computed_tokens")}
    return Rates("history", total["computed_tokens"] / total["wall_s"], spread=HISTORY_SPREAD,
                 task_seconds_per_token=per_task, note="this model's last run on this hardware")
