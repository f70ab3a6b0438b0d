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
