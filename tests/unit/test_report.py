"""Cost report arithmetic: apportioning a mixed batch, padding fraction, table."""

from __future__ import annotations

from lm_eval_ext.backend.cost_report import CostReport


def test_batch_cost_is_apportioned_by_useful_tokens():
    report = CostReport()
    report.add_batch("loglikelihood", {"a": 300, "b": 100}, wall_s=2.0, computed_tokens=200,
                     padded_tokens=250, requests_by_task={"a": 3, "b": 1})
    report.finish_call("loglikelihood", ["a", "b"], budget_tokens=256, oom_retries=1,
                       peak_memory_bytes={"cpu_rss": 10})
    data = report.as_dict()
    assert data["a/loglikelihood"]["wall_s"] == 1.5 and data["b/loglikelihood"]["wall_s"] == 0.5
    assert data["a/loglikelihood"]["tokens_computed"] == 150
    assert data["a/loglikelihood"]["padding_fraction"] == 0.2
    assert data["b/loglikelihood"]["num_requests"] == 1 and data["b/loglikelihood"]["oom_retries"] == 1
    table = report.format_table()
    assert "loglikelihood" in table and "budget" in table.splitlines()[0]


def test_empty_report_is_empty():
    assert CostReport().as_dict() == {} and CostReport().format_table().count("\n") == 0


def test_computed_tokens_as_the_engine_attributes_them_and_padding_never_negative():
    report = CostReport()
    report.add_batch("loglikelihood", {"a": 300, "b": 100}, wall_s=2.0, computed_tokens=200, padded_tokens=250,
                     requests_by_task={"a": 3, "b": 1}, computed_by_task={"a": 60.0, "b": 140.0})
    data = report.as_dict()
    assert data["a/loglikelihood"]["tokens_computed"] == 60 and data["b/loglikelihood"]["tokens_computed"] == 140
    assert data["b/loglikelihood"]["padded_tokens"] == round(140 + 50 * 0.25)
    assert all(entry["padding_fraction"] >= 0 for entry in data.values())
    assert data["a/loglikelihood"]["wall_s"] == 1.5  # seconds still by useful tokens


def test_an_entry_carries_the_estimate_it_started_from():
    report = CostReport()
    report.add_batch("loglikelihood", {"a": 10}, wall_s=1.0, computed_tokens=10, padded_tokens=10,
                     requests_by_task={"a": 1})
    report.set_estimate("a", "loglikelihood", tokens=10.0, seconds=1.234, source="history")
    entry = report.as_dict()["a/loglikelihood"]
    assert (entry["estimated_tokens"], entry["estimated_s"], entry["estimate_source"]) == (10.0, 1.23, "history")
