"""The request cache under real evaluations of the tiny model: kill -9 and resume, two ranks
then one, two models in one cache directory."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.reliability.forking import REPO, TASKS_DIR, preload, run_forked, tiny_model

pytestmark = pytest.mark.skipif(
    not (tiny_model() / "config.json").exists(), reason="tiny model not built: run `make models`"
)
LIMIT = 6  # documents per task: 24 loglikelihood + 6 generate_until + 6 rolling requests
TOTAL_REQUESTS = 36
# The kill test needs a run long enough for 10 kills to land inside it: the scoring engine does
# the 6-document workload in a few tens of ms, so it scores 12 documents one request per batch
# (stock request-count batching at batch_size=1: token budgets are the default otherwise).
KILL_LIMIT = 12  # 48 loglikelihood + 12 generate_until + 12 rolling requests
KILL_TOTAL_REQUESTS = 72
KILL_MODEL_ARGS = ",share_contexts=false,max_batch_tokens=off"
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module", autouse=True)
def _preloaded():
    os.environ.update(ENV)
    preload()


def evaluate(model_args: str, out: Path, batch_size: str = "1", limit: int = LIMIT):
    def target():
        from tests.reliability.run_eval import evaluate as run

        run(model_args, str(TASKS_DIR), str(out), limit=limit, batch_size=batch_size)

    return target


def read(out: Path) -> dict:
    return json.loads(out.read_text())


def stored_entries(cache_dir: Path) -> int:
    path = cache_dir / "requests.sqlite"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        except sqlite3.OperationalError:  # the child has created the file but not yet its tables
            return 0


def run_ok(target, tmp_path: Path, name: str):
    outcome = run_forked(target, log_path=tmp_path / f"{name}.log")
    assert outcome.returncode == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    return outcome


def test_kill_nine_ten_times_then_resume_gives_the_uninterrupted_results(tmp_path):
    model = tiny_model()
    run_ok(evaluate(f"pretrained={model},cache=off{KILL_MODEL_ARGS}", tmp_path / "base.json", limit=KILL_LIMIT),
           tmp_path, "base")
    cache_dir = tmp_path / "cache"
    args = f"pretrained={model},cache_dir={cache_dir}{KILL_MODEL_ARGS}"
    seed = int(os.environ.get("LM_EVAL_EXT_KILL_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    progress = []
    for attempt in range(10):
        # a random moment inside the computation: after 1-2 more stored results, plus 0-40 ms,
        # so the kill lands anywhere in a batch, a write, or between request types
        target_entries = stored_entries(cache_dir) + rng.randint(1, 2)
        extra_s = rng.uniform(0.0, 0.04)
        reached_s = []

        def due(target_entries=target_entries, extra_s=extra_s, reached_s=reached_s):
            now = time.monotonic()
            if not reached_s and stored_entries(cache_dir) >= target_entries:
                reached_s.append(now)
            return bool(reached_s) and now - reached_s[0] >= extra_s

        log = tmp_path / f"kill{attempt}.log"
        outcome = run_forked(evaluate(args, tmp_path / "partial.json", limit=KILL_LIMIT), log_path=log, kill_when=due)
        assert outcome.killed or outcome.returncode == 0, log.read_text()[-3000:]
        progress.append((outcome.killed, stored_entries(cache_dir)))
    print(f"kill -9 progress (seed {seed}; killed, stored entries after): {progress}")
    # most kills must have hit a run with work left (not a run that had just stored its last result)
    assert sum(killed for killed, n in progress if n < KILL_TOTAL_REQUESTS) >= 6, f"seed {seed}: {progress}"
    stored_before = stored_entries(cache_dir)

    run_ok(evaluate(args, tmp_path / "resumed.json", limit=KILL_LIMIT), tmp_path, "resumed")
    resumed, base = read(tmp_path / "resumed.json"), read(tmp_path / "base.json")
    assert resumed["samples"] == base["samples"], f"seed {seed}: {progress}"
    totals = resumed["request_cache"]["totals"]
    assert totals["hits"] == stored_before, f"seed {seed}: {progress}"
    assert totals["misses"] == KILL_TOTAL_REQUESTS - stored_before  # nothing stored was computed again
    assert stored_entries(cache_dir) == KILL_TOTAL_REQUESTS


def launch_two_ranks(cache_dir: Path, out: Path, extra_model_args: str = "") -> dict:
    """Two accelerate ranks over ``cache_dir``. A launch that dies in gloo's transport (a peer's TCP
    pair reset: seen once, in a fresh-clone suite run on 2026-12-06, rank 0 exiting 1 with its
    error cut off; it passed in 4 runs alone) is launched once more, and what its first rank said is
    kept as a warning; results are checked as before."""
    returncode, stderr = _launch_two_ranks(cache_dir, out, extra_model_args)
    if returncode != 0 and "gloo/transport" in stderr:
        warnings.warn("two-rank launch lost a gloo peer; launched again. Rank 0 said:\n" + _rank_lines(stderr, 0))
        returncode, stderr = _launch_two_ranks(cache_dir, out, extra_model_args)
    # each rank's own last lines: the first rank to fail is the cause, the other only lost its peer
    assert returncode == 0, _rank_lines(stderr, 0) + "\n...\n" + stderr[-3000:]
    return read(out)


def _rank_lines(stderr: str, rank: int) -> str:
    return "\n".join(line for line in stderr.splitlines() if line.startswith(f"[rank{rank}]"))[-3000:]


def _launch_two_ranks(cache_dir: Path, out: Path, extra_model_args: str) -> tuple[int, str]:
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        str(Path(__file__).with_name("run_eval.py")), "--model-args",
        f"pretrained={tiny_model()},cache_dir={cache_dir}{extra_model_args}", "--tasks-dir", str(TASKS_DIR),
        "--limit", str(LIMIT), "--batch-size", "4", "--out", str(out),
    ]
    env = {**os.environ, **ENV, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    # own process group: if ranks hang in a collective, the timeout ends them too, not just the launcher
    launcher = subprocess.Popen(launch, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, cwd=REPO, start_new_session=True)
    try:
        _, stderr = launcher.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.communicate()
        raise
    return launcher.returncode, stderr


def forget_rolling_documents_of_rank_one(cache_dir: Path) -> int:
    """Rank 1 of 2 evaluates documents 1, 3, 5: drop their rolling entries only."""
    from lm_eval_ext.cache.keys import canonical_json

    rows = (TASKS_DIR / "data" / "prose_test.jsonl").read_text().splitlines()
    texts = [json.loads(rows[doc])["text"] for doc in range(1, LIMIT, 2)]
    with sqlite3.connect(cache_dir / "requests.sqlite") as db:
        return sum(
            db.execute("DELETE FROM entries WHERE request_type = 'loglikelihood_rolling' AND args_json = ?",
                       (canonical_json([text]),)).rowcount
            for text in texts
        )


def test_two_ranks_then_one_rank_hits_everything_without_loading_weights(tmp_path):
    cache_dir = tmp_path / "cache"
    two = launch_two_ranks(cache_dir, tmp_path / "two.json")
    assert two["request_cache"]["scope"] == "rank 0 of 2"
    assert stored_entries(cache_dir) == TOTAL_REQUESTS

    # Rank 0 now has nothing to compute for rolling loglikelihood while rank 1 has 3 requests:
    # HFLM gathers window counts across ranks there, and with max_batch_tokens=auto the scoring
    # engine gathers the ranks' budgets, so rank 0 must still join both (or both ranks hang).
    assert forget_rolling_documents_of_rank_one(cache_dir) == LIMIT // 2
    again = launch_two_ranks(cache_dir, tmp_path / "again.json", ",max_batch_tokens=auto")
    rolling = again["request_cache"]["tasks"]["ext_prose_rolling"]["loglikelihood_rolling"]
    assert (rolling["hits"], rolling["misses"]) == (LIMIT // 2, 0)
    assert again["samples"] == two["samples"]

    run_ok(evaluate(f"pretrained={tiny_model()},cache_dir={cache_dir}", tmp_path / "one.json"), tmp_path, "one")
    one = read(tmp_path / "one.json")
    assert one["request_cache"]["totals"]["hits"] == TOTAL_REQUESTS
    assert one["request_cache"]["totals"]["misses"] == 0
    assert one["request_cache"]["model_loaded"] is False
    assert one["samples"] == two["samples"]


def _perturbed_copy(source: Path, target: Path):
    def build():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(source)
        with torch.no_grad():  # same architecture, tokenizer and file layout: only weights differ
            model.lm_head.weight.mul_(1.5)
        model.save_pretrained(target)
        AutoTokenizer.from_pretrained(source).save_pretrained(target)

    return build


def test_two_models_in_one_cache_directory_never_share_answers(tmp_path):
    other = tmp_path / "other-model"
    run_ok(_perturbed_copy(tiny_model(), other), tmp_path, "build")
    cache_dir = tmp_path / "cache"
    run_ok(evaluate(f"pretrained={tiny_model()},cache_dir={cache_dir}", tmp_path / "a.json"), tmp_path, "a")
    run_ok(evaluate(f"pretrained={other},cache_dir={cache_dir}", tmp_path / "b.json"), tmp_path, "b")
    first, second = read(tmp_path / "a.json"), read(tmp_path / "b.json")
    assert second["request_cache"]["totals"]["hits"] == 0
    assert second["request_cache"]["model_fingerprint"] != first["request_cache"]["model_fingerprint"]
    assert second["samples"] != first["samples"]
    assert stored_entries(cache_dir) == 2 * TOTAL_REQUESTS
