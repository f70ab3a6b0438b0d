"""Replica processes end with the run: on Ctrl-C in the middle of a request, and on a failing
request; nothing is left running and the pool's socket folder is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import SESSION_START_ENV
from tests.vllm.support import ENGINE_ARGS, ROOT, is_running, requires_vllm

pytestmark = [
    pytest.mark.vllm,
    requires_vllm,
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="2 replicas need 2 CPU cores"),
]


def _wait_until_gone(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(is_running(pid) for pid in pids):
            return True
        time.sleep(0.2)
    return False


def _read_replicas_line(child) -> dict:
    for line in child.stdout:
        if line.startswith("REPLICAS "):
            return json.loads(line[len("REPLICAS "):])
    raise AssertionError(f"child exited ({child.wait()}) before reporting its replicas")


def _deliverable_sigint() -> None:
    """Ctrl-C must reach the child's Python whatever this pytest process did before: an ignored
    or blocked SIGINT stays ignored or blocked across exec (Python keeps an ignored one ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_during_a_request_stops_every_replica(tiny_vllm_model_path):
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.vllm.interrupt_replicas", tiny_vllm_model_path],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True, env=SESSION_START_ENV,
        preexec_fn=_deliverable_sigint,
    )
    try:
        started = _read_replicas_line(child)
        # keep draining the child's output, or a full pipe would block it mid-shutdown
        threading.Thread(target=lambda: [None for _ in child.stdout], daemon=True).start()
        time.sleep(3.0)  # let the replicas start generating
        os.kill(child.pid, signal.SIGINT)
        # 40 s alone or beside CPU hogs; once, late in a full `make test` on the 2-core machine, the
        # interrupted child needed more than 60 s to exit: what matters is the assertions below
        child.wait(180)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode != 0  # KeyboardInterrupt ends the run
    assert _wait_until_gone(started["pids"], 10.0), f"replicas still running: {started['pids']}"
    assert not os.path.exists(started["scratch_dir"])


def test_a_failing_request_closes_the_pool_with_the_replica_traceback(tiny_vllm_model_path):
    from vllm import SamplingParams

    from lm_eval_ext.vllm.replicas import ReplicaPool, replica_pinning

    pool = ReplicaPool({"model": tiny_vllm_model_path, **ENGINE_ARGS}, [replica_pinning(i, 1, 0, [0, 1], 2) for i in range(2)])
    pids = [p.pid for p in pool._processes]
    too_long = [[1] * 4000]  # longer than the model's 1024 positions: vLLM refuses it in the replica
    with pytest.raises(RuntimeError, match="vllm_ext replica failed"):
        pool.run(too_long, [SamplingParams(max_tokens=1)])
    assert _wait_until_gone(pids, 10.0)
    assert pool.num_replicas == 0
