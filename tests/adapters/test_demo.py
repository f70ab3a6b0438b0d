"""`make demo` prints what a person reads at a glance: plan, scores, cost table, the cache in one
line, where results and chart are; no JSON dumps. Run here on the tiny model with 2 documents."""

from __future__ import annotations

import importlib.util
import json
import re

from tests.conftest import ROOT


def _demo():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_output_shape_results_and_chart(tiny_model_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LM_EVAL_EXT_CACHE_DIR", str(tmp_path / "cache"))
    out_dir = tmp_path / "out"
    assert _demo().main(["--model", str(tiny_model_path), "--limit", "2", "--output_path", str(out_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    sections = [line for line in lines if line.startswith("== ")]
    assert [s.split(":")[0] for s in sections] == ["== plan", "== scores", "== plan used", "== cost report"]
    scores = lines[lines.index("== scores") + 1:]
    scores = scores[:scores.index("")]
    assert {line.split()[0] for line in scores} >= {"ext_arith_mc", "ext_copy_gen", "ext_prose_rolling"}
    assert all(re.fullmatch(r"\S+ +\S+ +-?\d+\.\d{4}", line) for line in scores), scores
    table = lines[lines.index("== cost report") + 1:]
    assert table[0].split()[:3] == ["task", "request", "type"]
    assert {row.split()[1] for row in table[1:4]} == {"loglikelihood", "generate_until", "loglikelihood_rolling"}
    cache = [line for line in lines if line.startswith("request cache:")]
    assert len(cache) == 1 and re.match(r"request cache: 0 hits, \d+ computed \(0% hit rate", cache[0])
    assert f"results: {out_dir / 'results.json'}" in lines and f"chart: {out_dir / 'chart.png'}" in lines
    assert not any(line.lstrip().startswith("{") or "{\"" in line for line in lines), "a JSON dump"
    assert json.loads((out_dir / "results.json").read_text())["results"]["ext_copy_gen"]
    assert (out_dir / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
