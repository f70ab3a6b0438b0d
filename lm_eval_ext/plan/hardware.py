"""PURE: the machine as plain data, described by the user (``--gpus 4x80GiB``) or detected.

Detection (torch.cuda, the environment) is :mod:`lm_eval_ext.plan.detect` (EDGE).

:class:`Hardware` is what the pure planner and preflight checks read, so any layout can be planned
on a laptop: ``describe_hardware("4x80GiB", num_nodes=2)`` stands for two nodes of four 80 GiB
cards. GPUs are listed for one node; nodes are assumed alike (as launchers assume too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.launch import Launch
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
class Hardware:
    gpus: tuple[Gpu, ...] = ()
    cpu_ram_bytes: int = DEFAULT_DESCRIBED_CPU_RAM_BYTES
    num_cpu_cores: int = 1
    num_nodes: int = 1
    launch: Launch = field(default_factory=Launch)
    """This process's launch: read from the launcher's variables, or a planned one (described)."""
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
    launch = Launch()
    if num_processes is not None:
        if num_processes < 1 or num_processes % num_nodes:
            raise UserError(f"--num_processes {num_processes} must be a positive multiple of --nodes {num_nodes}")
        launch = Launch.resolve(world_size=num_processes, local_world_size=num_processes // num_nodes,
                                launcher="described")
    return Hardware(gpus=gpus, cpu_ram_bytes=cpu_ram_bytes or DEFAULT_DESCRIBED_CPU_RAM_BYTES,
                    num_cpu_cores=num_cpu_cores, num_nodes=num_nodes, launch=launch, described=True)
