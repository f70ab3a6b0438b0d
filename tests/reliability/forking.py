"""Run an evaluation in a forked child of an interpreter that has already imported torch,
transformers and lm-eval, so each run starts in milliseconds instead of ~15 s of imports, and can
be SIGKILLed at any moment like any other process.

The parent must never run torch operations itself: a child forked after OpenMP work can hang.
Children use one intra-op thread (the cores are shared and results must not depend on thread count).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TASKS_DIR = REPO / "tasks"


def tiny_model() -> Path:
    return Path(os.environ.get("LM_EVAL_EXT_TINY_MODEL", REPO / ".models" / "tiny-llama"))


def preload() -> None:
    """Import everything a run needs, in the parent, without running any torch operation."""
    import datasets  # noqa: F401
    import lm_eval.evaluator  # noqa: F401
    import lm_eval.tasks  # noqa: F401

    import lm_eval_ext.hf.adapter  # noqa: F401
    import lm_eval_ext.registry

    lm_eval_ext.registry.register_models()


@dataclass
class Outcome:
    returncode: int
    killed: bool
    wall_s: float


def run_forked(target, *, log_path: Path, kill_after_s: float | None = None, kill_when=None,
               env: dict | None = None, timeout_s: float = 300) -> Outcome:
    """Run ``target`` in a child; SIGKILL it after ``kill_after_s`` or once ``kill_when()`` is true
    (polled every 10 ms)."""
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ.update(env or {})
            import torch

            torch.set_num_threads(1)
            target()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        elapsed = time.monotonic() - started
        if done:
            return Outcome(os.waitstatus_to_exitcode(status), False, elapsed)
        if (kill_after_s is not None and elapsed >= kill_after_s) or (kill_when is not None and kill_when()):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return Outcome(-signal.SIGKILL, True, elapsed)
        if elapsed > timeout_s:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"evaluation did not finish in {timeout_s} s; log: {log_path}")
        time.sleep(0.01)
