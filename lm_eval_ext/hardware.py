"""EDGE: the machine as plain data, detected (torch.cuda, the environment) or described.

:class:`Hardware` is what the pure planner and preflight checks read, so any layout can be planned
on a laptop: ``describe_hardware("4x80GiB", num_nodes=2)`` stands for two nodes of four 80 GiB
cards. GPUs are listed for one node; nodes are assumed alike (as launchers assume too).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from lm_eval_ext.errors import UserError
from lm_eval_ext.units import GiB, format_bytes, parse_bytes

#: RAM assumed for a described machine when the user does not say (a typical GPU server)
DEFAULT_DESCRIBED_CPU_RAM_BYTES = 256 * GiB


@dataclass(frozen=True)
class Gpu:
    name: str
    total_bytes: int
    free_bytes: int
    supports_bf16: bool = True

    def describe(self) -> str:
        free = "" if self.free_bytes == self.total_bytes else f", {format_bytes(self.free_bytes)} free"
        return f"{self.name} ({format_bytes(self.total_bytes)}{free})"


@dataclass(frozen=True)
class LaunchEnv:
    """The launcher's variables, parsed. ``None`` means the variable is absent."""

    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None
    local_world_size: int | None = None
    cuda_visible_devices: str | None = None
    omp_num_threads: str | None = None
    launcher: str = "python"  # "accelerate", "torchrun", "slurm", "python"

    @property
    def num_processes(self) -> int:
        return self.world_size or 1

    @property
    def num_local_processes(self) -> int:
        return self.local_world_size or self.world_size or 1


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[Gpu, ...] = ()
    cpu_ram_bytes: int = DEFAULT_DESCRIBED_CPU_RAM_BYTES
    num_cpu_cores: int = 1
    num_nodes: int = 1
    launch: LaunchEnv = field(default_factory=LaunchEnv)
    described: bool = False

    @property
    def num_gpus_per_node(self) -> int:
        return len(self.gpus)

    @property
    def num_gpus(self) -> int:
        return len(self.gpus) * self.num_nodes

    def describe(self) -> str:
        nodes = f"{self.num_nodes} nodes x " if self.num_nodes > 1 else ""
        if not self.gpus:
            return f"{nodes}CPU only ({format_bytes(self.cpu_ram_bytes)} RAM, {self.num_cpu_cores} cores)"
        names = [g.describe() for g in self.gpus]
        if len(set(names)) == 1:
            return f"{nodes}{len(names)} x {names[0]}"
        return nodes + ", ".join(names)


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


_COUNT_SIZE = re.compile(r"^\s*(\d+)\s*[xX*]\s*(.+)$")


def parse_gpu_spec(spec: str) -> tuple[int, ...]:
    """``"4x80GiB"`` -> four sizes; ``"24GiB,24GiB"`` -> two; ``"2x24GiB,80GiB"`` mixes both."""
    sizes: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise UserError(f"--gpus {spec!r} has an empty entry; write e.g. 4x80GiB or 24GiB,24GiB")
        match = _COUNT_SIZE.match(part)
        count, size = (int(match.group(1)), match.group(2)) if match else (1, part)
        if count < 1:
            raise UserError(f"--gpus {spec!r}: a GPU count must be at least 1 (got {count})")
        sizes.extend([parse_bytes(size, what="--gpus")] * count)
    if any(s <= 0 for s in sizes):
        raise UserError(f"--gpus {spec!r}: every GPU needs a memory size above zero")
    return tuple(sizes)


def describe_hardware(spec: str = "", *, num_nodes: int = 1, cpu_ram_bytes: int | None = None,
                      num_cpu_cores: int = 32, num_processes: int | None = None) -> Hardware:
    """Hardware as the user describes it; free memory is taken equal to total (empty cards).

    ``spec=""`` describes a CPU-only machine. ``num_processes`` stands for the launch the user
    intends (``accelerate launch --num_processes N``), spread evenly over the nodes.
    """
    if num_nodes < 1:
        raise UserError(f"--nodes {num_nodes} must be at least 1")
    sizes = parse_gpu_spec(spec) if spec.strip() else ()
    gpus = tuple(Gpu("GPU", s, s) for s in sizes)
    launch = LaunchEnv()
    if num_processes is not None:
        if num_processes < 1 or num_processes % num_nodes:
            raise UserError(f"--num_processes {num_processes} must be a positive multiple of --nodes {num_nodes}")
        launch = LaunchEnv(world_size=num_processes, local_world_size=num_processes // num_nodes,
                           launcher="described")
    return Hardware(gpus=gpus, cpu_ram_bytes=cpu_ram_bytes or DEFAULT_DESCRIBED_CPU_RAM_BYTES,
                    num_cpu_cores=num_cpu_cores, num_nodes=num_nodes, launch=launch, described=True)
