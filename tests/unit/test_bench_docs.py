"""The documentation's figures are generated (run.py --docs): the renderer on a small fake results
JSON, pending blocks left alone, unknown markers failing loudly, and every marker in the repository
naming a scenario that exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import scenarios  # noqa: F401  (registers the scenarios)
from benchmarks.lib import docs
from benchmarks.lib.scenarios import SCENARIOS
from benchmarks.lib.stats import speedup_verdict

ROOT = Path(__file__).resolve().parents[2]


def _row(key: str, title: str, base: float, cand: float) -> dict:
    return {"row": title, "key": key, "baseline_label": "stock hf", "candidate_label": "hf_ext",
            "baseline": {"median_s": base, "min_s": base, "max_s": base},
            "candidate": {"median_s": cand, "min_s": cand, "max_s": cand, "repetitions": 3},
            "comparison": speedup_verdict([base] * 3, [cand] * 3),
            "agreement": {"agreeing_samples": 4, "compared_samples": 4, "all_agree": True}}


def fake_results(suite: str = "cpu-full") -> dict:
    return {"suite": suite, "model": "m", "repetitions": 3, "started_utc": "2026-12-06 10:00", "wall_s": 10.0,
            "command": f"python benchmarks/run.py --suite {suite} --only real-tasks --limit 200",
            "machine": {"cpu_model": "Test CPU", "num_cpu_cores": 2, "ram_bytes": 2**30, "gpus": [],
                        "versions": {}, "git": {"commit": "abcdef0123456789", "dirty": False}},
            "scenarios": {
                "real-tasks": {"status": "ok", "reason": "", "notes": ["arc_easy_local: stock 8 s (best)"],
                               "rows": [_row("arc_easy_local", "real arc_easy_local (200 docs)", 8.0, 4.0),
                                        _row("lambada_openai_local", "real lambada (200 docs)", 3.0, 2.5)]},
                "forward-ceiling": {"status": "ok", "reason": "", "figures": {"table": "32 rows x 90 tokens: 650 tokens/s"}},
                "planner": {"status": "skipped", "reason": "no rejected layout runnable here"},
            }}


def rewrite(text: str, *results: dict) -> tuple[str, list[str]]:
    return docs.rewrite(text, [docs.Results(f"r{i}.json", r) for i, r in enumerate(results)], "doc.md")


def block(spec: str, body: str = "old\n") -> str:
    return f"before\n<!-- bench:{spec} -->\n{body}<!-- /bench -->\nafter\n"


def test_a_row_block_renders_that_row_and_the_command_that_measures_it_again():
    text, pending = rewrite(block("real-tasks:arc_easy_local"), fake_results())
    assert not pending and text.startswith("before\n<!-- bench:real-tasks:arc_easy_local -->\n| scenario |")
    assert "| real arc_easy_local (200 docs) | stock hf -> hf_ext | 8.00 [8.00-8.00] | 4.00 [4.00-4.00] | 2.00x | faster" in text
    assert "lambada" not in text and "old" not in text and text.endswith("<!-- /bench -->\nafter\n")
    assert "`python benchmarks/run.py --suite cpu-full --only real-tasks --limit 200`" in text
    assert "from `r0.json`: suite `cpu-full`, 2026-12-06 10:00 UTC, commit abcdef0123" in text


def test_figures_notes_whole_scenarios_and_skips():
    figure, _ = rewrite(block("forward-ceiling:table"), fake_results())
    assert "```\n32 rows x 90 tokens: 650 tokens/s\n```" in figure
    notes, _ = rewrite(block("real-tasks:notes"), fake_results())
    assert "- arc_easy_local: stock 8 s (best)" in notes and "| scenario |" not in notes
    whole, _ = rewrite(block("real-tasks"), fake_results())
    assert "arc_easy_local (200 docs)" in whole and "lambada (200 docs)" in whole and "- arc_easy_local:" in whole
    skipped, _ = rewrite(block("planner"), fake_results())
    assert "`planner` skipped: no rejected layout runnable here" in skipped


def test_the_pinned_suite_or_the_first_results_holding_the_scenario_is_used():
    quick = fake_results("cpu-quick")
    quick["scenarios"]["real-tasks"]["rows"][0]["baseline"] |= {"median_s": 6.0, "min_s": 6.0, "max_s": 6.0}
    first, _ = rewrite(block("real-tasks:arc_easy_local"), quick, fake_results())
    assert "6.00 [6.00-6.00]" in first
    pinned, _ = rewrite(block("real-tasks:arc_easy_local@cpu-full"), quick, fake_results())
    assert "8.00 [8.00-8.00]" in pinned
    by_folder = docs.rewrite(block("real-tasks:arc_easy_local@real-tasks-200"),
                             [docs.Results("benchmarks/results/cpu-full/results.json", fake_results()),
                              docs.Results("benchmarks/results/real-tasks-200/results.json", quick)])[0]
    assert "6.00 [6.00-6.00]" in by_folder and "from `benchmarks/results/real-tasks-200/results.json`" in by_folder
    # measured again into that folder only when the run is that whole folder (else it would drop the others)
    assert docs.reproduce_command(quick, "real-tasks", "benchmarks/results/real-tasks-200/results.json") == (
        "python benchmarks/run.py --suite cpu-quick --only real-tasks --limit 200")
    alone = quick | {"scenarios": {"real-tasks": quick["scenarios"]["real-tasks"]}}
    assert docs.reproduce_command(alone, "real-tasks", "benchmarks/results/real-tasks-200/results.json").endswith(
        "--limit 200 --out benchmarks/results/real-tasks-200")
    assert docs.reproduce_command({"suite": "cpu-full", "scenarios": {}}, "all", "benchmarks/results/cpu-full/x.json") \
        == "python benchmarks/run.py --suite cpu-full --out benchmarks/results/cpu-full"


def test_a_block_no_results_hold_is_left_as_it_is_and_reported_pending():
    text = block("engine-ceiling", "pasted by hand, 2026-12-01\n")
    again, pending = rewrite(text, fake_results())
    assert again == text and pending == ["doc.md:2 engine-ceiling (no results hold scenario engine-ceiling)"]
    _, pending = rewrite(block("real-tasks@gpu"), fake_results())
    assert pending == ["doc.md:2 real-tasks@gpu (no results hold scenario real-tasks)"]
    # a run that measured the scenario without this row (another --tasks) leaves the block pending, saying why
    text = block("real-tasks:nope")
    again, (why,) = rewrite(text, fake_results())
    assert again == text and why.startswith("doc.md:2 real-tasks:nope (r0.json: scenario 'real-tasks' has no row "
                                            "or figure 'nope'; choose from ['arc_easy_local',")


def test_rendering_twice_changes_nothing():
    once, _ = rewrite(block("real-tasks") + block("all"), fake_results())
    assert rewrite(once, fake_results())[0] == once


def test_unknown_markers_fail_loudly(tmp_path):
    with pytest.raises(docs.DocsError, match="line 2: <!-- bench:real-tasks --> has no <!-- /bench -->"):
        rewrite("x\n<!-- bench:real-tasks -->\nno end\n", fake_results())
    (tmp_path / "README.md").write_text(block("no-such-scenario"))
    with pytest.raises(docs.DocsError, match="README.md:2: bench marker names unknown scenario 'no-such-scenario'"):
        docs.check(tmp_path, set(SCENARIOS))


def test_update_rewrites_files_from_results_json(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "engine.md").write_text(block("real-tasks:lambada_openai_local"))
    (tmp_path / "README.md").write_text(block("engine-ceiling"))
    results = tmp_path / "results.json"
    results.write_text(json.dumps(fake_results()))
    changed, pending = docs.update(tmp_path, [results], set(SCENARIOS))
    assert changed == ["docs/engine.md"] and pending == ["README.md:2 engine-ceiling (no results hold scenario "
                                                         "engine-ceiling)"]
    assert "lambada (200 docs)" in (tmp_path / "docs" / "engine.md").read_text()
    assert "from `results.json`" in (tmp_path / "docs" / "engine.md").read_text()


def test_every_marker_in_the_repository_names_a_scenario_that_exists():
    found = docs.check(ROOT, set(SCENARIOS))
    assert found, "README.md, docs/*.md and benchmarks/README.md have bench blocks"
    for entry in found:
        scenario = entry.split()[1].split(":")[0].split("@")[0]
        assert scenario == "all" or scenario in SCENARIOS, entry


def test_the_committed_results_render_every_block_they_hold():
    loaded = docs.load([ROOT / "benchmarks" / "results"], ROOT)  # what `make bench-docs` reads
    assert {r.data["suite"] for r in loaded} >= {"cpu-quick", "cpu-full"}
    for path in docs.documents(ROOT):
        text = path.read_text()
        new, _ = docs.rewrite(text, loaded, str(path.relative_to(ROOT)))
        assert new == text, f"{path.relative_to(ROOT)} is not what `make bench-docs` generates: run it"
