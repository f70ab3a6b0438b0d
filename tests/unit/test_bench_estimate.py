"""The estimate scenario's bookkeeping (benchmarks/scenarios/estimate.py): each step's own cost
counters (the worker's per-step deltas, the warm-up left out), and the verdicts against the issue's
targets."""

from __future__ import annotations

from benchmarks.lib import real_tasks
from benchmarks.scenarios.estimate import engine_counters, markdown_table, verdicts


def test_each_step_counts_only_what_it_added():
    """The worker reports each step's counters as what that step added (a task not run shows
    zeros); the warm-up step is left out, not subtracted a second time."""
    steps = [{"label": "warmup", "measured": False, "tasks": ["arc"],
              "extension": {"by_task": {"arc": {"tokens_computed": 10}}}},
             {"label": "arc", "tasks": ["arc"], "extension": {"by_task": {"arc": {"tokens_computed": 110}}}},
             {"label": "mmlu", "tasks": ["mmlu"], "extension": {"by_task": {"arc": {"tokens_computed": 0},
                                                                             "mmlu": {"tokens_computed": 50}}}}]
    counters = engine_counters(steps)
    assert counters["arc"] == {"tokens_computed": 110} and counters["mmlu"] == {"tokens_computed": 50}


def test_verdicts_hold_estimates_to_the_targets():
    rows = [{"task": "arc", "requests": 4, "counted_tokens": 100, "engine_tokens": 100, "counted_low": 100, "counted_high": 100,
             "measured_s": 1.2, "history_s": 0.9, "actual_s": 1.0},
            {"task": real_tasks.GSM8K, "requests": 2, "counted_tokens": 500, "engine_tokens": 620, "counted_low": 300,
             "counted_high": 900, "measured_s": 12.0, "history_s": 9.5, "actual_s": 10.0}]
    out = verdicts(rows, latency_s=7.5)
    assert out["measured_per_task_within_25pct"] and out["history_per_task_within_25pct"]
    assert out["scoring_tokens_exact"] and out["generation_tokens_in_range"] and out["plan_latency_under_10s"]
    assert abs(out["measured_total_error"] - (13.2 / 11 - 1)) < 1e-9
    rows[0]["measured_s"] = 2.0
    assert not verdicts(rows, latency_s=12)["measured_per_task_within_25pct"]
    assert "| total | | | | 14.0 | 10.4 | 11.0 |" in markdown_table(rows)
