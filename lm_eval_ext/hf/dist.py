"""EDGE: the launcher's view of this process (ranks from the environment) and its CPU setup.

``accelerate launch`` and ``torchrun`` both export RANK / WORLD_SIZE / LOCAL_RANK; the global rank
decides which documents a process evaluates (using LOCAL_RANK, as stock lm-eval does, gives two
nodes the same shard).
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launch_info(environ: Mapping[str, str] = os.environ) -> LaunchInfo:
    return LaunchInfo(
        rank=int(environ.get("RANK", "0")),
        world_size=int(environ.get("WORLD_SIZE", "1")),
        local_rank=int(environ.get("LOCAL_RANK", "0")),
    )


def prefer_cpu_collectives(has_cuda: bool, environ=os.environ) -> bool:
    """Under a multi-process launch without CUDA, make accelerate use gloo on CPU.

    ``accelerate launch --multi_gpu`` and ``torchrun`` on a CPU-only machine otherwise fail
    to pick a backend. Returns whether the variable was set here.
    """
    if has_cuda or not launch_info(environ).is_distributed or "ACCELERATE_USE_CPU" in environ:
        return False
    environ["ACCELERATE_USE_CPU"] = "true"
    return True


@functools.cache  # registered once per process
def release_process_group_at_exit() -> None:
    """Destroy the default process group when the interpreter exits.

    Left to interpreter teardown, a gloo process group's C++ threads were sometimes destroyed
    while still joinable: the rank that finished first died with "terminate called without an
    active exception" (SIGABRT) after a complete evaluation, and the launch failed (seen in 1 of
    3 two-rank runs here). Does nothing if no group exists by then.
    """

    def release() -> None:
        dist = sys.modules.get("torch.distributed")  # never imported at exit: too late to load torch
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    atexit.register(release)
