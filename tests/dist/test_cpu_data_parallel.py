"""Two real gloo ranks on CPU: each evaluates half of the documents, rank 0 writes the merged
results, and every per-sample result equals a single-process run (float32: 1e-5 absolute,
1e-6 relative for rolling sums)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TASKS = "ext_arith_mc,ext_copy_gen,ext_prose_rolling"
LIMIT = 16  # documents per task (ext_prose_rolling has 12): even counts, so halves are exact
NUM_DOCS = {"ext_arith_mc": 16, "ext_copy_gen": 16, "ext_prose_rolling": 12}


def _lm_eval_args(model: Path, out: Path) -> list[str]:
    return ["-m", "lm_eval", "--model", "hf_ext", "--model_args", f"pretrained={model}",
            "--tasks", TASKS, "--include_path", str(ROOT / "tasks"), "--batch_size", "4", "--limit", str(LIMIT),
            "--output_path", str(out), "--log_samples"]


def _samples(out: Path) -> dict:
    """(task, doc_id) -> logged responses, parsed back from lm-eval's stringified form."""
    found = {}
    for path in out.rglob("samples_*.jsonl"):
        task = re.match(r"samples_(.+)_\d{4}-", path.name).group(1)
        for line in path.read_text().splitlines():
            row = json.loads(line)
            found[(task, row["doc_id"])] = _parse(row["resps"])
    return found


def _parse(logged):
    if isinstance(logged, list):
        return [_parse(item) for item in logged]
    try:
        return ast.literal_eval(logged)
    except (ValueError, SyntaxError):
        return logged


def _assert_close(want, got, key):
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        assert got == pytest.approx(want, abs=1e-5, rel=1e-6), key  # rel: rolling sums
    elif isinstance(want, (list, tuple)):
        assert len(want) == len(got), key
        for w, g in zip(want, got):
            _assert_close(w, g, key)
    else:
        assert want == got, key


@pytest.fixture(scope="module")
def single_process_samples(tiny_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    subprocess.run([sys.executable, *_lm_eval_args(tiny_model_path, out)], check=True,
                   capture_output=True, text=True, timeout=600)
    return _samples(out)


def test_two_cpu_ranks_each_do_half_and_match_one_process(tiny_model_path, single_process_samples,
                                                          tmp_path, scratch_env):
    out = tmp_path / "dp2"
    cmd = [str(BIN / "accelerate"), "launch", "--config_file",
           str(ROOT / "accelerate_configs" / "cpu_dp2.yaml"), "--main_process_port",
           str(free_port()), *_lm_eval_args(tiny_model_path, out)]
    scratch_env.pop("ACCELERATE_USE_CPU", None)  # hf_ext must set it by itself
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=scratch_env)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = done.stdout + done.stderr

    shards = re.findall(r"rank (\d)/2: (\w+): (\d+) requests over (\d+) documents", logs)
    docs_per_rank = {}
    for rank, kind, _, num_docs in shards:
        docs_per_rank[(int(rank), kind)] = int(num_docs)
    expected_half = {"loglikelihood": 8, "generate_until": 8, "loglikelihood_rolling": 6}
    for kind, half in expected_half.items():
        assert docs_per_rank.get((0, kind)) == half, (kind, shards)
        assert docs_per_rank.get((1, kind)) == half, (kind, shards)

    merged = _samples(out)
    assert len(list(out.rglob("results_*.json"))) == 1, "only rank 0 writes results"
    assert {task: sum(1 for t, _ in merged if t == task) for task in NUM_DOCS} == NUM_DOCS
    assert merged.keys() == single_process_samples.keys()
    for key, want in single_process_samples.items():
        _assert_close(want, merged[key], key)
