"""EDGE: the machine this process runs on (torch.cuda, /proc, the launcher's variables).

Returns the plain :class:`~lm_eval_ext.plan.hardware.Hardware` that the pure planner reads;
:func:`machine` is what both backends plan on: the machine described for a dry run
(:mod:`lm_eval_ext.plan.dry_run`), else this one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from lm_eval_ext.plan.dry_run import described_hardware
from lm_eval_ext.plan.hardware import DEFAULT_DESCRIBED_CPU_RAM_BYTES, Gpu, Hardware
from lm_eval_ext.plan.launch_env import read_launch_env


def _cpu_ram_bytes(meminfo: str = "/proc/meminfo") -> int:
    """RAM available now (like a GPU's free memory: other processes' use excluded), else total."""
    try:
        with open(meminfo) as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return DEFAULT_DESCRIBED_CPU_RAM_BYTES


def _free_and_total_bytes(torch, index: int) -> tuple[int, int]:
    total_bytes = int(torch.cuda.get_device_properties(index).total_memory)
    try:
        # NVML reads usage without opening a CUDA context on every GPU from every rank
        used_bytes = int(torch.cuda.device_memory_used(index))
        return max(0, total_bytes - used_bytes), total_bytes
    except Exception:  # no nvidia-ml-py: exact, but costs a context (~0.5 GiB) on that GPU
        free_bytes, total_bytes = torch.cuda.mem_get_info(index)
        return int(free_bytes), int(total_bytes)


def detect_gpus() -> tuple[Gpu, ...]:
    """Visible CUDA devices with their free memory now (other processes' use included)."""
    try:
        import torch
    except ImportError:
        return ()
    if not torch.cuda.is_available():
        return ()
    gpus = []
    for index in range(torch.cuda.device_count()):
        free_bytes, total_bytes = _free_and_total_bytes(torch, index)
        major, _ = torch.cuda.get_device_capability(index)
        gpus.append(Gpu(torch.cuda.get_device_name(index), total_bytes, free_bytes, major >= 8))
    return tuple(gpus)


def mps_available() -> bool:
    """Apple's MPS device can run here (torch.backends.mps)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def num_cpu_cores() -> int:
    """Cores this process may run on (its affinity), else the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def detect_hardware(environ: Mapping[str, str] = os.environ) -> Hardware:
    launch = read_launch_env(environ)
    return Hardware(gpus=detect_gpus(), cpu_ram_bytes=_cpu_ram_bytes(), num_cpu_cores=num_cpu_cores(),
                    num_nodes=launch.num_nodes, launch=launch)


def machine(environ: Mapping[str, str] = os.environ) -> Hardware:
    """The machine described for a dry run, else the detected one."""
    return described_hardware(read_launch_env(environ), environ) or detect_hardware(environ)
