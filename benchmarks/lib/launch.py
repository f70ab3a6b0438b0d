"""EDGE: the one way the benchmark instrument starts a process.

Every child process starts here, and every child runs ``benchmarks/lib/child.py`` on a JSON spec
(no child code in strings):

- :func:`run_plan`: the evaluation worker (:mod:`benchmarks.lib.worker`) on a plan, as one process
  or as N ranks under ``accelerate launch``; rank files merged;
- :func:`run_function`: any ``module:function`` in a fresh interpreter (this one, or another venv's
  such as a vLLM venv), its JSON result returned;
- :func:`run_command`: an external console command (``lm-eval-ext plan ...``), output and wall time.

Each child runs in its own process group, ended on timeout or interruption, so no worker outlives
the benchmark. CPU data parallel uses ``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu``
(gloo); plain ``--cpu --num_processes 2`` starts one process only (docs/upstream.md). The cores are
split between the processes, so DP 1 and DP 2 get the same hardware.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).resolve().parent / "child.py"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
}


class ChildFailed(RuntimeError):
    """A child process exited non-zero or timed out; the message ends with its log's tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_command(spec_path: Path, num_processes: int = 1, python: str | None = None) -> list[str]:
    """``python child.py SPEC``, or the same under ``accelerate launch`` for several ranks."""
    python = python or sys.executable
    if num_processes <= 1:
        return [python, str(CHILD), str(spec_path)]
    launch = [python, "-m", "accelerate.commands.launch", "--num_machines", "1",
              "--num_processes", str(num_processes), "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "--multi_gpu"]
    return launch + [str(CHILD), str(spec_path)]


def child_env(num_processes: int = 1, use_gpu: bool = False, extra: dict | None = None) -> dict:
    env = dict(os.environ) | OFFLINE_ENV | (extra or {})
    if not use_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
        if num_processes > 1:
            env |= {"ACCELERATE_USE_CPU": "true", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    return env


def _start_child(target: str, kwargs: dict, work_dir: Path, *, out: Path | None, num_processes: int,
                 use_gpu: bool, timeout_s: float, env: dict | None, python: str | None) -> tuple[int | None, float]:
    """Write the spec, run the child (its output into ``work_dir/child.log``); (returncode, wall s)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path = work_dir / "child.json"
    spec = {"target": target, "kwargs": kwargs, "out": str(out) if out else None}
    spec_path.write_text(json.dumps(spec, indent=1, default=str))
    start = time.perf_counter()
    with (work_dir / "child.log").open("w") as log:
        returncode = _run_process_group(child_command(spec_path, num_processes, python), log,
                                        child_env(num_processes, use_gpu, env), timeout_s)
    return returncode, time.perf_counter() - start


def run_function(target: str, kwargs: dict, work_dir: Path, *, python: str | None = None, env: dict | None = None,
                 timeout_s: float = 900, use_gpu: bool = False):
    """Call ``target`` (``"module:function"``) with ``kwargs`` in a fresh interpreter; returns its
    JSON result. Raises :class:`ChildFailed` (with the log's tail) if it did not finish."""
    out = work_dir / "result.json"
    out.unlink(missing_ok=True)
    returncode, wall_s = _start_child(target, kwargs, work_dir, out=out, num_processes=1, use_gpu=use_gpu,
                                      timeout_s=timeout_s, env=env, python=python)
    if returncode != 0 or not out.exists():
        why = "timed out" if returncode is None else f"exit code {returncode}"
        raise ChildFailed(f"{target} {why} after {wall_s:.0f} s; log tail:\n" + _tail(work_dir / "child.log"))
    return json.loads(out.read_text())


def run_plan(plan: dict, work_dir: Path, *, num_processes: int = 1, use_gpu: bool = False,
             timeout_s: float = 900, env: dict | None = None, python: str | None = None) -> dict:
    """Run ``plan`` (see :mod:`benchmarks.lib.worker`) in fresh processes; returns the merged result.

    ``python`` is the interpreter for the workers (default: this one), e.g. a separate vLLM venv.
    The merged result has ``process_wall_s`` (start to exit, imports included), ``ranks`` and
    ``steps`` (one per plan step, merged over ranks), or ``error`` with the log's tail.
    """
    plan = plan | {"out_dir": str(work_dir)}
    for stale in work_dir.glob("rank*.json"):
        stale.unlink()
    returncode, wall_s = _start_child("benchmarks.lib.worker:run", {"plan": plan}, work_dir, out=None,
                                      num_processes=num_processes, use_gpu=use_gpu, timeout_s=timeout_s,
                                      env=env, python=python)
    ranks = [json.loads(p.read_text()) for p in sorted(work_dir.glob("rank*.json"))]
    merged = {"process_wall_s": wall_s, "num_processes": num_processes, "returncode": returncode}
    if len({len(r["steps"]) for r in ranks}) > 1:  # a rank stopped early: keep the steps all finished
        done = min(len(r["steps"]) for r in ranks)
        ranks = [r | {"steps": r["steps"][:done]} for r in ranks]
    if returncode != 0 or len(ranks) < num_processes:
        why = "timed out" if returncode is None else f"exit code {returncode}"
        merged["error"] = f"worker {why}; log tail:\n" + _tail(work_dir / "child.log")
    if ranks:
        merged |= merge_ranks(ranks)
    return merged


@dataclass(frozen=True)
class Completed:
    returncode: int | None
    """``None``: timed out (the process group was ended)."""
    stdout: str
    stderr: str
    wall_s: float


def run_command(command: list[str], *, env: dict | None = None, timeout_s: float = 120,
                cwd: Path = ROOT) -> Completed:
    """Run an external command (a console script) in its own process group; its output and wall time."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env=dict(os.environ) | OFFLINE_ENV | (env or {}), start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
        returncode = proc.returncode
    except subprocess.TimeoutExpired:
        _end_group(proc)
        stdout, stderr, returncode = "", "timed out", None
    except BaseException:
        _end_group(proc)
        raise
    return Completed(returncode, stdout, stderr, time.perf_counter() - start)


def has_module(name: str) -> bool:
    """Child side of :func:`module_available`."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def module_available(name: str, python: str | None = None, work_dir: Path | None = None) -> bool:
    """Whether ``name`` imports in this interpreter, or in ``python`` (another venv) when given."""
    if not python:
        return has_module(name)
    where = work_dir or ROOT / "out" / "bench" / "probes" / name
    try:
        return bool(run_function("benchmarks.lib.launch:has_module", {"name": name}, where, python=python,
                                 timeout_s=120))
    except ChildFailed:
        return False


def _run_process_group(cmd: list[str], log, env: dict, timeout_s: float) -> int | None:
    """Run ``cmd`` in its own process group; on timeout or interruption end the whole group
    (accelerate's ranks included). ``None`` means timed out."""
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _end_group(proc)
        return None
    except BaseException:
        _end_group(proc)
        raise


def _end_group(proc: subprocess.Popen) -> None:
    for sig, grace_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=grace_s)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, num_chars: int = 3000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-num_chars:]


def merge_ranks(ranks: list[dict]) -> dict:
    """One record per step: the slowest rank's times, memory summed and max'ed over ranks,
    outputs from rank 0 (lm-eval gathers them there)."""
    ranks = sorted(ranks, key=lambda r: r["rank"])
    steps = []
    for index, first in enumerate(ranks[0]["steps"]):
        per_rank = [r["steps"][index] for r in ranks if index < len(r["steps"])]
        step = dict(first)
        step["eval_s"] = max((s.get("eval_s", 0.0) for s in per_rank), default=None)
        step["load_s"] = max((s["load_s"] for s in per_rank if "load_s" in s), default=None)
        for key in ("peak_rss_bytes", "rss_growth_bytes", "peak_gpu_bytes", "gpu_growth_bytes"):
            values = [s[key] for s in per_rank if key in s]
            if values:
                step[key] = max(values)
                step[key.replace("_bytes", "_sum_bytes")] = sum(values)
        step["request_types"] = _merge_request_types(per_rank)
        errors = [s["error"] for s in per_rank if "error" in s]
        if errors:
            step["error"] = errors[0]
        steps.append(step)
    return {"ranks": [{k: v for k, v in r.items() if k != "steps"} for r in ranks], "steps": steps}


def _merge_request_types(per_rank: list[dict]) -> dict:
    merged: dict[str, dict] = {}
    for step in per_rank:
        for name, entry in step.get("request_types", {}).items():
            into = merged.setdefault(name, {"time_s": 0.0, "computed_requests": 0, "calls": 0})
            into["time_s"] = max(into["time_s"], entry["time_s"])
            into["computed_requests"] += entry["computed_requests"]
            into["calls"] = max(into["calls"], entry["calls"])
    return merged
