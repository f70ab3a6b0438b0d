"""EDGE: process-group setup of a launch for ``hf_ext``: collectives on CPU, and the group released at exit.

Which rank this process is comes from :func:`lm_eval_ext.plan.launch_env.read_launch_env` (the one
reader of the launcher's variables).
"""

from __future__ import annotations

import atexit
import functools
import os
import sys

from lm_eval_ext.plan.launch_env import read_launch_env


def prefer_cpu_collectives(has_cuda: bool, environ=os.environ) -> bool:
    """Under a multi-process launch without CUDA, make accelerate use gloo on CPU.

    ``accelerate launch --multi_gpu`` and ``torchrun`` on a CPU-only machine otherwise fail
    to pick a backend. Returns whether the variable was set here.
    """
    if has_cuda or not read_launch_env(environ).is_distributed or "ACCELERATE_USE_CPU" in environ:
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
