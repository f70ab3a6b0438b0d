"""The stock-vs-ext comparison's pure parts (compare-hf, real-tasks): configurations per task,
repetitions, stock's best, rows in the runner's table; and compare-hf's place in the suites."""

from __future__ import annotations

import pytest

from benchmarks.lib import compare
from benchmarks.lib.agreement import compact_samples
from benchmarks.lib.compare import EXT, Comparison, Group
from benchmarks.lib.gsm8k import TASK_NAME as GSM8K_TASK
from benchmarks.lib.report import table_rows
from benchmarks.lib.rows import best_row
from benchmarks.lib.suites import SUITES
from benchmarks.scenarios.hf import task_configurations


def steps(impl, walls, text="a", group=GSM8K_TASK, rss=100):
    out = []
    for rep, wall in enumerate(walls):
        step = {"label": f"{group}/{impl}-r{rep}", "impl": impl, "group": group, "measured": True, "repetition": rep}
        if wall is None:
            out.append(step | {"error": "exit 1"})
            continue
        out.append(step | {"eval_s": wall, "peak_rss_bytes": rss,
                           "samples": compact_samples({group: [{"doc_id": 0, "resps": [[text]]}]}),
                           "workload": {group: {"requests": 1, "tokens": 50, "request_type": "generate_until"}},
                           "request_types": {"generate_until": {"time_s": wall, "computed_requests": 1, "calls": 1}}})
    return out


def test_generation_tasks_try_their_own_stock_batch_sizes_and_skip_stock_auto():
    configs = task_configurations(GSM8K_TASK, (8, 32), (1, 8), stock_auto=False, unshared=False)
    assert list(configs) == ["hf batch_size=1", "hf batch_size=8", "hf batch_size=auto", EXT]
    assert configs["hf batch_size=auto"] is None and compare.left_out(configs) == ["hf batch_size=auto"]
    scoring = task_configurations("ext_arith_mc", (8, 32), (1, 8), stock_auto=True, unshared=True)
    assert scoring["hf batch_size=32"] == {"backend": "hf", "batch_size": 32}
    assert scoring["hf_ext unshared"]["share_contexts"] == "false"
    assert configs[EXT]["cache"] == scoring["hf_ext unshared"]["cache"] == "off"  # repetitions compute


def test_repetitions_take_their_median_and_a_failed_one_disqualifies():
    runs = steps("hf batch_size=1", [3.0, 1.0, 2.0]) + steps("hf batch_size=8", [0.5, None, 0.6]) + steps(EXT, [1.0])
    row = best_row("r", runs, baselines=["hf batch_size=1", "hf batch_size=8"], candidate=EXT,
                   label_prefix=f"{GSM8K_TASK}/")
    # batch_size=8's median would be lower, but one of its repetitions failed: it is not stock's best
    assert row["best_baseline"] == "hf batch_size=1" and row["baseline_medians_s"] == {"hf batch_size=1": 2.0}
    assert row["baseline"]["median_s"] == 2.0 and row["baseline"]["times_s"] == [3.0, 1.0, 2.0]


def test_stock_best_is_the_lowest_median_and_rows_fit_the_runner_table():
    runs = (steps("hf batch_size=1", [9.0, 10.0, 11.0]) + steps("hf batch_size=8", [12.0, 8.0, 13.0])
            + steps(EXT, [4.0, 5.0, 6.0]))
    comparison = Comparison("c", {"hf batch_size=1": {}, "hf batch_size=8": {}, EXT: {}},
                            [Group(GSM8K_TASK, (GSM8K_TASK,), 8)], [], stock=("hf batch_size=1", "hf batch_size=8"),
                            candidate=EXT)
    (row,) = compare.best_rows(comparison, {"steps": runs}, lambda g: f"compare_hf {g.key} ({g.limit} docs)")
    assert row["best_baseline"] == "hf batch_size=1" and row["key"] == GSM8K_TASK
    assert row["comparison"]["speedup"] == pytest.approx(2.0)
    assert row["comparison"]["verdict"] == "faster"
    assert row["agreement"]["all_agree"]
    assert row["baseline"]["median_s"] == 10.0 and row["candidate"]["times_s"] == [4.0, 5.0, 6.0]
    (line,) = table_rows({"scenarios": {"compare-hf": {"rows": [row]}}})
    assert "gsm8k_local (8 docs)" in line and "2.00x" in line and "1/1 ok" in line and "hits" not in line
    assert compare.medians_note(row) == (f"{GSM8K_TASK}: hf batch_size=1 10.00 s (best), hf batch_size=8 12.00 s; "
                                         "hf_ext 5.00 s")


def test_different_generations_are_reported():
    runs = steps("hf batch_size=1", [2.0], text="a") + steps(EXT, [1.0], text="b")
    row = best_row("r", runs, baselines=["hf batch_size=1"], candidate=EXT, label_prefix=f"{GSM8K_TASK}/")
    assert row["agreement"]["agreeing_samples"] == 0 and not row["agreement"]["all_agree"]
    assert row["agreement"]["examples"][0]["baseline"] == ["a"] and row["agreement"]["examples"][0]["candidate"] == ["b"]


def test_comparison_steps_warm_up_then_interleave_per_group():
    comparison = Comparison("c", {"stock": {}, "ext": {}, "auto": {}}, [Group("a", ("a",), 4), Group("b", ("b",), None,
                                                                                                    ("stock", "ext"))],
                            [], stock=("stock", "auto"), candidate="ext", fresh_model=("auto",), num_processes=2)
    plan = compare.steps(comparison, repetitions=2, warmup_limit=1)
    assert [s["label"] for s in plan] == [
        "warmup-stock", "warmup-ext",  # a configuration built afresh for every run is not warmed up
        "a/stock-r0", "a/ext-r0", "a/auto-r0", "a/auto-r1", "a/ext-r1", "a/stock-r1",
        "b/stock-r0", "b/ext-r0", "b/ext-r1", "b/stock-r1"]
    assert plan[0]["limit"] == 2 and plan[0]["measured"] is False  # at least one document per process
    assert [s.get("fresh_model", False) for s in plan if s["impl"] == "auto"] == [True, True]
    assert plan[-1]["limit"] is None and plan[2]["limit"] == 4


def test_compare_hf_runs_in_cpu_full_but_not_in_the_bounded_suites():
    assert "compare-hf" in SUITES["cpu-full"].scenarios
    assert SUITES["cpu-full"].limit("compare-hf-gsm8k")
    assert "compare-hf" not in SUITES["cpu-quick"].scenarios
    assert "compare-hf" not in SUITES["gpu"].scenarios
