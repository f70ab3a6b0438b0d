"""A fully cached hf_ext re-run answers before importing the backend, with the same results.

Every run is a fresh interpreter (the point is what it imports), over a copy of the tiny model
(so a test can touch its files) and one request cache directory per test.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from lm_eval_ext.cache.fast_path import memo_key
from tests.conftest import ROOT

TASKS = "ext_arith_mc,ext_copy_gen,ext_prose_rolling"
LIMIT = 6


def _run(model: str, model_args: str, env: dict, tasks: str = TASKS, limit: int = LIMIT) -> dict:
    done = subprocess.run([sys.executable, "-m", "tests.adapters.fast_path_run", model, model_args, tasks, str(limit)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_same(expected: dict, got: dict, atol: float) -> None:
    assert expected.keys() == got.keys()
    for key, want in expected.items():
        for want_resp, got_resp in zip(want, got[key], strict=True):
            a, b = want_resp[0], got_resp[0]
            if isinstance(a, str):
                assert a == b, key
            elif isinstance(a, list):
                assert math.isclose(a[0], b[0], abs_tol=atol) and a[1] == b[1], key
            else:
                assert math.isclose(a, b, abs_tol=atol, rel_tol=1e-6), key


def _totals(report: dict) -> tuple[int, int]:
    counters = [c for types in report["tasks"].values() for c in types.values()]
    return sum(c["hits"] for c in counters), sum(c["misses"] for c in counters)


@pytest.fixture
def model_copy(tmp_path, tiny_model_path):
    return str(shutil.copytree(tiny_model_path, tmp_path / "model"))


def test_warm_run_skips_backend_and_equals_cold_and_stock(model_copy, scratch_env):
    args = f"pretrained={model_copy},dtype=float32,device=cpu"
    stock = _run("hf", args, scratch_env)
    cold = _run("hf_ext", args, scratch_env)
    warm = _run("hf_ext", args, scratch_env)

    assert cold["backend_imported"] and not warm["backend_imported"]
    _assert_same(stock["samples"], cold["samples"], atol=1e-5)
    assert warm["samples"] == cold["samples"] and warm["results"] == cold["results"]
    assert warm["tokenizer_info"] == cold["tokenizer_info"] == stock["tokenizer_info"]
    assert warm["plan"] == cold["plan"]
    assert _totals(warm["request_cache"]) == (_totals(cold["request_cache"])[1], 0)
    assert warm["request_cache"]["fast_path"] is True and warm["request_cache"]["model_loaded"] is False


def test_touched_checkpoint_or_new_requests_take_the_backend(model_copy, scratch_env):
    args = f"pretrained={model_copy},dtype=float32,device=cpu"
    cold = _run("hf_ext", args, scratch_env, tasks="ext_arith_mc")

    # more documents than cached: the front loads the backend, which computes only the new ones
    wider = _run("hf_ext", args, scratch_env, tasks="ext_arith_mc", limit=LIMIT + 2)
    assert wider["backend_imported"]
    hits, misses = _totals(wider["request_cache"])
    assert hits == _totals(cold["request_cache"])[1] and misses > 0
    stock = _run("hf", args, scratch_env, tasks="ext_arith_mc", limit=LIMIT + 2)
    _assert_same(stock["samples"], wider["samples"], atol=1e-5)

    # a file of the checkpoint changed (same content, new mtime): no memo vouches for it
    config = os.path.join(model_copy, "config.json")
    os.utime(config, ns=(os.stat(config).st_atime_ns, os.stat(config).st_mtime_ns + 1_000_000))
    touched = _run("hf_ext", args, scratch_env, tasks="ext_arith_mc")
    assert touched["backend_imported"] and touched["samples"] == cold["samples"]


def test_memo_key_covers_arguments_files_and_launch(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    base = {"pretrained": str(model), "dtype": "float32"}
    key = memo_key(base, {})
    assert key and memo_key(dict(reversed(list(base.items()))), {}) == key
    assert memo_key({**base, "dtype": "bfloat16"}, {}) != key
    assert memo_key(base, {"WORLD_SIZE": "2"}) is None
    for off in ({"cache": "off"}, {"cache": "write"}, {"peft": "x"}, {"pretrained": "org/hub-id"}):
        assert memo_key({**base, **off}, {}) is None
    (model / "weights.bin").write_bytes(b"0")
    assert memo_key(base, {}) != key
