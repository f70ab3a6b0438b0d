"""EDGE: start a worker process (or N of them under ``accelerate launch``), wait, merge rank files.

CPU data parallel uses ``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu`` (gloo); plain
``--cpu --num_processes 2`` starts one process only (docs/upstream.md). The cores are split between
the processes, so DP 1 and DP 2 get the same hardware.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

WORKER = Path(__file__).resolve().parent / "worker.py"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_command(num_processes: int, python: str | None = None) -> list[str]:
    python = python or sys.executable
    if num_processes <= 1:
        return [python, str(WORKER)]
    launch = [python, "-m", "accelerate.commands.launch", "--num_machines", "1",
              "--num_processes", str(num_processes), "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "--multi_gpu"]
    return launch + [str(WORKER)]


def worker_env(num_processes: int, use_gpu: bool, extra: dict | None = None) -> dict:
    env = dict(os.environ) | OFFLINE_ENV | (extra or {})
    if not use_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
        if num_processes > 1:
            env |= {"ACCELERATE_USE_CPU": "true", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    return env


def run_plan(plan: dict, work_dir: Path, *, num_processes: int = 1, use_gpu: bool = False,
             timeout_s: float = 900, env: dict | None = None, python: str | None = None) -> dict:
    """Run ``plan`` (see worker.py) in fresh processes; returns the merged result.

    ``python`` is the interpreter for the workers (default: this one), e.g. a separate vLLM venv.
    The merged result has ``process_wall_s`` (start to exit, imports included), ``ranks`` and
    ``steps`` (one per plan step, merged over ranks), or ``error`` with the log's tail.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    plan = plan | {"out_dir": str(work_dir)}
    plan_path = work_dir / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=1))
    log_path = work_dir / "worker.log"
    start = time.perf_counter()
    with log_path.open("w") as log:
        returncode = _run_process_group(worker_command(num_processes, python) + [str(plan_path)], log,
                                        worker_env(num_processes, use_gpu, env), timeout_s)
    wall_s = time.perf_counter() - start
    ranks = [json.loads(p.read_text()) for p in sorted(work_dir.glob("rank*.json"))]
    merged = {"process_wall_s": wall_s, "num_processes": num_processes, "returncode": returncode}
    if len({len(r["steps"]) for r in ranks}) > 1:  # a rank stopped early: keep the steps all finished
        done = min(len(r["steps"]) for r in ranks)
        ranks = [r | {"steps": r["steps"][:done]} for r in ranks]
    if returncode != 0 or len(ranks) < num_processes:
        why = "timed out" if returncode is None else f"exit code {returncode}"
        merged["error"] = f"worker {why}; log tail:\n" + _tail(log_path)
    if ranks:
        merged |= merge_ranks(ranks)
    return merged


def _run_process_group(cmd: list[str], log, env: dict, timeout_s: float) -> int | None:
    """Run ``cmd`` in its own process group; on timeout or interruption end the whole group
    (accelerate's ranks included), so no worker outlives the benchmark. ``None`` means timed out."""
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=WORKER.parents[2],
                            start_new_session=True)
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
