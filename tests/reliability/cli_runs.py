"""Real CLI processes for the signal tests: start ``lm-eval-ext run`` / ``lm_eval``, wait until the
request cache holds some results, signal, and read back what each process printed and stored."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.dist.test_cpu_data_parallel import _samples

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: one request per batch, no shared contexts: a tiny-model run lasts long enough to be signalled mid-way
SLOW_MODEL_ARGS = "max_batch_tokens=off,share_contexts=false"
TASKS = "ext_suite"  # loglikelihood (4 per document), generate_until and rolling (1 each)
LIMIT = 12
TOTAL_REQUESTS = 6 * LIMIT
LINE = re.compile(r"^lm-eval-ext: error: interrupted after (\d+) of (\d+) requests; (\d+) are in the request cache; "
                  r"rerun the same command to resume$")


def run_argv(model: Path, cache_dir: Path | str, out: Path, *, cli: str = "lm-eval-ext", extra: str = "") -> list[str]:
    model_args = f"pretrained={model},{SLOW_MODEL_ARGS},cache_dir={cache_dir}{extra}"
    head = [str(BIN / "lm-eval-ext"), "run"] if cli == "lm-eval-ext" else [sys.executable, "-m", "lm_eval"]
    return [*head, "--model", "hf_ext", "--model_args", model_args, "--tasks", TASKS, "--include_path",
            str(REPO / "tasks"), "--limit", str(LIMIT), "--batch_size", "1", "--output_path", str(out), "--log_samples"]


@dataclass
class Run:
    process: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def last_line(self) -> str:
        lines = [line for line in re.split(r"[\r\n]", self.text()) if line.strip()]
        return lines[-1] if lines else ""

    def error_lines(self) -> list[str]:
        return [line for line in re.split(r"[\r\n]", self.text()) if line.startswith("lm-eval-ext: error:")]

    def wait(self, timeout_s: float = 400) -> int:
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"{self.log.name} did not end in {timeout_s} s:\n{self.text()[-3000:]}") from None


def start(argv: list[str], log: Path, env: dict, cwd: Path) -> Run:
    """Own session: a signal reaches this process only, and a hang is killed with its children."""
    handle = log.open("w")
    process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    handle.close()
    return Run(process, log)


def stored_entries(cache_dir: Path) -> int:
    """Results committed to the cache directory, whatever its layout (the package's own reader)."""
    from lm_eval_ext.cache.layout import count_entries

    return count_entries(cache_dir)


def wait_for_entries(cache_dir: Path, at_least: int, runs: list[Run], timeout_s: float = 300) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            count = stored_entries(cache_dir)
        except (sqlite3.Error, OSError, ValueError):
            count = 0
        if count >= at_least:
            return count
        for run in runs:
            if run.process.poll() is not None:
                raise AssertionError(f"{run.log.name} ended ({run.process.returncode}) before storing {at_least} "
                                     f"results:\n{run.text()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"fewer than {at_least} results stored in {timeout_s} s")


def results(out: Path) -> dict:
    (path,) = [p for p in out.rglob("results_*.json")]
    return json.loads(path.read_text())


def samples(out: Path) -> dict:
    return _samples(out)
