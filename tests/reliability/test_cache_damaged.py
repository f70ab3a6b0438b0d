"""A real evaluation process over a damaged cache: one clear line, no traceback, file untouched."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.reliability.forking import REPO, TASKS_DIR, tiny_model

from lm_eval_ext.cache.store import DB_FILE, Entry, RequestStore


@pytest.mark.skipif(not (tiny_model() / "config.json").exists(), reason="tiny model not built: run `make models`")
def test_evaluation_over_a_truncated_cache_stops_with_one_line_and_leaves_the_file(tmp_path):
    store = RequestStore.open(tmp_path)
    store.put_many([Entry(f"k{i}", "fp", "generate_until", "[]", '"x"' + " " * 200, 0.0) for i in range(2000)])
    store.close()
    path = tmp_path / DB_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # e.g. a copy cut short
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("run_eval.py")), "--model-args",
         f"pretrained={tiny_model()},cache_dir={tmp_path}", "--tasks-dir", str(TASKS_DIR),
         "--tasks", "ext_prose_rolling", "--limit", "2", "--out", str(tmp_path / "never.json")],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("lm-eval-ext: error:")]
    assert len(errors) == 1 and "is truncated" in errors[0] and f"mv '{path}'" in errors[0], done.stderr[-2000:]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert not (tmp_path / "never.json").exists()
