"""EDGE: detect the machine this process runs on (torch.cuda, /proc, the launcher's variables).

Returns the plain :class:`~lm_eval_ext.plan.hardware.Hardware` that the pure planner reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.hardware import DEFAULT_DESCRIBED_CPU_RAM_BYTES, Gpu, Hardware, LaunchEnv


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} must be an integer") from None


def detect_launcher(environ: Mapping[str, str]) -> str:
    # accelerate launch always exports its mixed-precision choice; checked first because its
    # multi-GPU mode runs through torch elastic and so also looks like torchrun
    if "ACCELERATE_MIXED_PRECISION" in environ:
        return "accelerate"
    if "TORCHELASTIC_RUN_ID" in environ:
        return "torchrun"
    if "SLURM_PROCID" in environ:
        return "slurm"
    return "python"


def read_launch_env(environ: Mapping[str, str] = os.environ) -> LaunchEnv:
    return LaunchEnv(
        rank=_env_int(environ, "RANK"),
        local_rank=_env_int(environ, "LOCAL_RANK"),
        world_size=_env_int(environ, "WORLD_SIZE"),
        local_world_size=_env_int(environ, "LOCAL_WORLD_SIZE"),
        cuda_visible_devices=environ.get("CUDA_VISIBLE_DEVICES"),
        omp_num_threads=environ.get("OMP_NUM_THREADS"),
        master_addr=environ.get("MASTER_ADDR"),
        master_port=environ.get("MASTER_PORT"),
        launcher=detect_launcher(environ),
    )


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


def _num_nodes(environ: Mapping[str, str], launch: LaunchEnv) -> int:
    if launch.world_size and launch.local_world_size:
        return max(1, launch.world_size // launch.local_world_size)
    return _env_int(environ, "SLURM_NNODES") or 1


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


def detect_hardware(environ: Mapping[str, str] = os.environ) -> Hardware:
    launch = read_launch_env(environ)
    return Hardware(
        gpus=detect_gpus(),
        cpu_ram_bytes=_cpu_ram_bytes(),
        num_cpu_cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        num_nodes=_num_nodes(environ, launch),
        launch=launch,
    )
