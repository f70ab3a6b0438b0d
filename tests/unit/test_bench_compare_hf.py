"""compare_hf.py's pure parts: configurations per task, repetitions, stock's best, runner rows;
and its place in the suites."""

from __future__ import annotations

import pytest

from benchmarks.compare_hf import GSM8K_TASK, task_configurations
from benchmarks.lib.compare_summary import EXT, merge_repetitions, runner_rows, summarize_task
from benchmarks.lib.report import table_rows
from benchmarks.lib.suites import SUITES


def run(walls, text="a", rss=100):
    return [{"wall_s": w, "peak_rss_bytes": rss, "metrics": {"exact_match": 1.0},
             "responses": {"0": [text]}, "cost_report": {"t/generate_until": {"useful_tokens": 50}}} for w in walls]


def test_generation_tasks_try_their_own_stock_batch_sizes_and_skip_stock_auto():
    configs = task_configurations(GSM8K_TASK, (8, 32), (1, 8), stock_auto=False, unshared=False)
    assert list(configs) == ["hf batch_size=1", "hf batch_size=8", "hf batch_size=auto", EXT]
    assert configs["hf batch_size=auto"] is None
    scoring = task_configurations("ext_arith_mc", (8, 32), (1, 8), stock_auto=True, unshared=True)
    assert scoring["hf batch_size=32"] == {"backend": "hf", "batch_size": 32}
    assert scoring["hf_ext unshared"]["share_contexts"] == "false"
    assert configs[EXT]["cache"] == scoring["hf_ext unshared"]["cache"] == "off"  # repetitions compute


def test_repetitions_merge_to_their_median_and_a_failed_one_wins():
    merged = merge_repetitions(run([3.0, 1.0, 2.0]))
    assert merged["wall_s"] == 2.0 and merged["walls_s"] == [3.0, 1.0, 2.0]
    assert merge_repetitions(run([1.0]) + [{"error": "exit 1"}]) == {"error": "exit 1"}


def test_stock_best_is_the_lowest_median_and_rows_fit_the_runner_table():
    runs = {"hf batch_size=1": merge_repetitions(run([9.0, 10.0, 11.0])),
            "hf batch_size=8": merge_repetitions(run([12.0, 8.0, 13.0])),
            "hf batch_size=auto": {"skipped": "why"},
            EXT: merge_repetitions(run([4.0, 5.0, 6.0]))}
    entry = summarize_task("gsm8k_local", runs)
    assert entry["best_stock"] == "hf batch_size=1"
    assert entry["speedup_vs_best_stock"] == pytest.approx(2.0)
    assert entry["comparison"]["verdict"] == "faster"
    assert entry["samples_agreement"]["all_agree"]
    assert all("responses" not in r for r in entry["runs"].values())
    (row,) = runner_rows({"limits": {"gsm8k_local": 8}, "tasks": {"gsm8k_local": entry}})
    assert row["baseline"]["median_s"] == 10.0 and row["candidate"]["times_s"] == [4.0, 5.0, 6.0]
    (line,) = table_rows({"scenarios": {"compare-hf": {"rows": [row]}}})
    assert "gsm8k_local (8 docs)" in line and "2.00x" in line and "1/1 ok" in line


def test_different_generations_are_reported():
    runs = {"hf batch_size=1": merge_repetitions(run([2.0], text="a")), EXT: merge_repetitions(run([1.0], text="b"))}
    entry = summarize_task("ext_copy_gen", runs)
    assert entry["agreement_vs_best_stock"]["generation_mismatches"] == 1
    assert not entry["samples_agreement"]["all_agree"]


def test_compare_hf_runs_in_cpu_full_but_not_in_the_bounded_suites():
    assert "compare-hf" in SUITES["cpu-full"].scenarios
    assert SUITES["cpu-full"].limit("compare-hf-gsm8k")
    assert "compare-hf" not in SUITES["cpu-quick"].scenarios
    assert "compare-hf" not in SUITES["gpu"].scenarios
