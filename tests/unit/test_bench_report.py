"""Rendering of the benchmark table and of a generated documentation block (pure, no models)."""

from benchmarks.lib import docs
from benchmarks.lib.gsm8k import TASK_NAME, local_definition
from benchmarks.lib.report import render_table
from benchmarks.lib.stats import speedup_verdict

MACHINE = {
    "cpu_model": "Test CPU", "num_cpu_cores": 2, "ram_bytes": 24 * 2**30, "gpus": [],
    "versions": {"torch": "2.13.0", "transformers": "5.19.0", "lm_eval": "0.4.13"},
    "git": {"commit": "0123456789abcdef", "dirty": False}, "load_average_at_start": [1.0, 1.0, 1.0],
}


def _results() -> dict:
    row = {"row": "hf scoring, multiple choice", "baseline_label": "stock hf", "candidate_label": "hf_ext",
           "baseline": {"median_s": 10.0, "min_s": 9.5, "max_s": 11.0, "rss_growth_bytes": 2**20},
           "candidate": {"median_s": 4.0, "min_s": 3.9, "max_s": 4.2, "tokens_per_s": 1234.5,
                         "rss_growth_bytes": 2 * 2**20, "requests": 8, "cache_hits": 0},
           "comparison": speedup_verdict([9.5, 10.0, 11.0], [3.9, 4.0, 4.2]),
           "agreement": {"agreeing_samples": 8, "compared_samples": 8, "all_agree": True}}
    return {"suite": "cpu-quick", "model": "m", "repetitions": 3, "started_utc": "2026-11-22 17:00",
            "wall_s": 42.0, "machine": MACHINE, "load_average_at_end": [2.0, 1.5, 1.0],
            "scenarios": {"hf-suite": {"status": "ok", "reason": "", "rows": [row]},
                          "vllm": {"status": "skipped", "reason": "vLLM is not installed"}}}


def test_table_has_numbers_verdict_and_skips():
    table = render_table(_results())
    line = next(x for x in table.splitlines() if x.startswith("| hf scoring"))
    assert "10.00 [9.50-11.00]" in line and "4.00 [3.90-4.20]" in line
    assert "2.50x" in line and "| faster |" in line and "1,234" in line and "8/8 ok" in line
    assert "- `vllm` skipped: vLLM is not installed" in table
    assert "Test CPU, 2 cores, 24 GiB RAM, no GPU" in table


def test_readme_section_is_replaced_not_duplicated():
    text = "# Benchmarks\n\nintro\n\n<!-- bench:all@cpu-quick -->\nfirst table\n<!-- /bench -->\n"
    results = [docs.Results("results.json", _results())]
    once, pending = docs.rewrite(text, results)
    twice, _ = docs.rewrite(once, results)
    assert once == twice and not pending
    assert "first table" not in once and once.count("<!-- bench:") == 1 and once.count("<!-- /bench -->") == 1
    assert once.startswith("# Benchmarks\n\nintro") and render_table(_results()).rstrip() in once


def test_gsm8k_keeps_lm_eval_definition_but_reads_local_files(tmp_path):
    stock = {"task": "gsm8k", "tag": ["x"], "dataset_path": "openai/gsm8k", "dataset_name": "main",
             "num_fewshot": 5, "generation_kwargs": {"until": ["Question:"]}}
    local = local_definition(stock, tmp_path)
    assert local["task"] == TASK_NAME and local["dataset_path"] == "json" and "dataset_name" not in local
    assert local["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / "test.jsonl")
    assert local["num_fewshot"] == 5 and local["generation_kwargs"] == {"until": ["Question:"]}


def test_planner_layouts_accepts_chosen_and_rejected_or_says_why():
    import pytest

    from benchmarks.lib.scenarios import Skip
    from benchmarks.scenarios.planner import planner_layouts

    chosen, rejected = planner_layouts({"chosen": {"strategy": "dp", "data_parallel_size": 2},
                                        "rejected": [{"strategy": "single", "data_parallel_size": 1}]})
    assert chosen["data_parallel_size"] == 2 and rejected[0]["strategy"] == "single"
    with pytest.raises(Skip, match="not understood"):
        planner_layouts({"strategy": "split"})
