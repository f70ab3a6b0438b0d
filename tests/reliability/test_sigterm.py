"""SIGTERM, as a scheduler sends it at a time limit or on preemption, ends a run the way Ctrl-C does:
what arrived is stored, one line says so and how to resume, the process exits 143; a second
SIGTERM or a SIGKILL during the store loses nothing committed; the rerun computes only what is
missing and equals an uninterrupted run, sample for sample. Real CLI processes, real signals."""

from __future__ import annotations

import signal
import sqlite3
import time

import pytest

from tests.reliability.cli_runs import (
    LINE, TOTAL_REQUESTS, results, run_argv, samples, start, stored_entries, wait_for_entries,
)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_path, tmp_path_factory):
    """The same evaluation, never interrupted, with the cache off: the reference samples."""
    import os

    folder = tmp_path_factory.mktemp("uninterrupted")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = start(run_argv(tiny_model_path, folder / "none", folder / "out", extra=",cache=off"), folder / "run.log",
                env, folder)
    assert run.wait() == 0, run.text()[-3000:]
    return samples(folder / "out")


def _interrupt(argv, tmp_path, name, scratch_env, cache_dir, *, after: int, signals) -> tuple:
    """Start, wait until ``after`` more results are stored, send ``signals`` ((signal, delay_s)...)."""
    run = start(argv, tmp_path / f"{name}.log", scratch_env, tmp_path)
    before = wait_for_entries(cache_dir, stored_entries(cache_dir) + after, [run])
    for sig, delay_s in signals:
        time.sleep(delay_s)
        run.process.send_signal(sig)
    return run, before, run.wait()


def test_sigterm_stores_what_arrived_says_so_in_one_line_and_exits_143(tiny_model_path, uninterrupted, tmp_path,
                                                                       scratch_env):
    cache_dir = tmp_path / "cache"
    argv = run_argv(tiny_model_path, cache_dir, tmp_path / "out", cli="lm_eval")

    run, _, code = _interrupt(argv, tmp_path, "term", scratch_env, cache_dir, after=3,
                              signals=[(signal.SIGTERM, 0)])
    assert code == 143, run.text()[-3000:]
    match = LINE.match(run.last_line())
    assert match, run.text()[-3000:]
    assert "Traceback" not in run.text() and len(run.error_lines()) == 1
    done, total, kept = map(int, match.groups())
    assert done == kept == stored_entries(cache_dir) and total == 4 * 12  # stopped inside loglikelihood

    # a second SIGTERM while the first is being handled (torchrun forwards the scheduler's): one line, all kept
    run, _, code = _interrupt(argv, tmp_path, "twice", scratch_env, cache_dir, after=3,
                              signals=[(signal.SIGTERM, 0), (signal.SIGTERM, 0.001)])
    assert code == 143 and len(run.error_lines()) == 1, run.text()[-3000:]
    assert int(LINE.match(run.last_line()).group(3)) == stored_entries(cache_dir)

    # SIGKILL (KillWait over) right after SIGTERM: what was committed before stays
    run, before, code = _interrupt(argv, tmp_path, "killed", scratch_env, cache_dir, after=3,
                                   signals=[(signal.SIGTERM, 0), (signal.SIGKILL, 0.005)])
    assert code in (143, -signal.SIGKILL), run.text()[-3000:]
    stored = stored_entries(cache_dir)
    assert stored >= before
    with sqlite3.connect(cache_dir / "requests.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    resumed = start(run_argv(tiny_model_path, cache_dir, tmp_path / "resumed", cli="lm-eval-ext"),
                    tmp_path / "resumed.log", scratch_env, tmp_path)
    assert resumed.wait() == 0, resumed.text()[-3000:]
    assert samples(tmp_path / "resumed") == uninterrupted
    totals = results(tmp_path / "resumed")["config"]["request_cache"]["totals"]
    assert (totals["hits"], totals["misses"]) == (stored, TOTAL_REQUESTS - stored)  # only the missing ones computed


def test_sigterm_before_any_computation_is_one_line_and_143(tiny_model_path, tmp_path, scratch_env):
    """While the model is built (nothing computed yet), through ``lm-eval-ext run``."""
    cache_dir = tmp_path / "cache"
    run = start(run_argv(tiny_model_path, cache_dir, tmp_path / "out"), tmp_path / "early.log", scratch_env, tmp_path)
    deadline = time.monotonic() + 120
    while "plan: hf" not in run.text() and time.monotonic() < deadline and run.process.poll() is None:
        time.sleep(0.01)
    run.process.send_signal(signal.SIGTERM)
    assert run.wait() == 143, run.text()[-3000:]
    assert run.last_line() == ("lm-eval-ext: error: interrupted (SIGTERM) outside a computation; every computation "
                               "that finished is in the request cache (unless cache=off or read); rerun the same "
                               "command to resume"), run.text()[-3000:]
    assert "Traceback" not in run.text()


def test_two_srun_ranks_terminated_then_one_process_resumes_from_their_shards(tiny_model_path, uninterrupted,
                                                                              tmp_path, scratch_env):
    """A preempted two-task srun job with its cache on a shared filesystem (shards layout: each rank its own
    file), requeued with one task: every rank stores its own, rank 0 prints the line, both exit 143; the
    resume reads every shard, computes only what is missing and equals the uninterrupted run."""
    from tests.dist.test_srun_ranks import free_slurm_job_id, srun_env

    from lm_eval_ext.cache.shards import shard_paths

    cache_dir, job_id = tmp_path / "cache", free_slurm_job_id()
    argv = run_argv(tiny_model_path, cache_dir, tmp_path / "out")
    ranks = [start(argv, tmp_path / f"rank{rank}.log", {**srun_env(scratch_env, rank, 2, job_id),
                                                         "LM_EVAL_EXT_CACHE_LAYOUT": "shards"}, tmp_path)
             for rank in (0, 1)]
    try:
        wait_for_entries(cache_dir, 8, ranks)
    finally:
        for rank in ranks:
            rank.process.send_signal(signal.SIGTERM)
    codes = [rank.wait() for rank in ranks]
    assert codes == [143, 143], "\n".join(rank.text()[-2000:] for rank in ranks)
    match = LINE.match(ranks[0].last_line())
    assert match and int(match.group(2)) == 4 * 12 // 2, ranks[0].text()[-3000:]  # rank 0's half of loglikelihood
    assert ranks[1].error_lines() == [] and "rank 1: interrupted after" in ranks[1].text()
    assert not any("Traceback" in rank.text() for rank in ranks)
    assert len(shard_paths(cache_dir)) == 2 and not (cache_dir / "requests.sqlite").exists()
    stored = stored_entries(cache_dir)

    resumed = start(run_argv(tiny_model_path, cache_dir, tmp_path / "resumed"), tmp_path / "resumed.log",
                    {**scratch_env, "LM_EVAL_EXT_CACHE_LAYOUT": "shards"}, tmp_path)
    assert resumed.wait() == 0, resumed.text()[-3000:]
    assert "layout shards (forced by LM_EVAL_EXT_CACHE_LAYOUT=shards" in resumed.text()
    # each srun rank ran with one OpenMP thread, the reference with two: float32 sums in another order
    assert_close(samples(tmp_path / "resumed"), uninterrupted)
    totals = results(tmp_path / "resumed")["config"]["request_cache"]["totals"]
    assert (totals["hits"], totals["misses"]) == (stored, TOTAL_REQUESTS - stored)


def assert_close(got, want, where: str = "samples") -> None:
    """Equal structure and strings; numbers within 1e-5 absolute (1e-6 relative, for rolling sums)."""
    if isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-5, rel=1e-6), where
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            assert_close(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]")
    else:
        assert got == want, where
