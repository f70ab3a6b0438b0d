"""EDGE: the one reader of the launcher's variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ...).

Every part of the package that asks "which rank am I" gets a :class:`~lm_eval_ext.plan.launch.Launch`
from :func:`read_launch_env` (or from the hardware it is part of). A new launcher (SLURM's ``srun``,
which exports ``SLURM_PROCID``/``SLURM_LOCALID``/``SLURM_NTASKS`` instead of torch's names) is
taught here and nowhere else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.launch import Launch


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


def read_launch_env(environ: Mapping[str, str] = os.environ) -> Launch:
    """This process's launch; without launcher variables, one process (rank 0 of 1)."""
    world_size, local_world_size = _env_int(environ, "WORLD_SIZE"), _env_int(environ, "LOCAL_WORLD_SIZE")
    spans_known = bool(world_size and local_world_size)  # else the scheduler may know the node count
    return Launch.resolve(
        rank=_env_int(environ, "RANK"),
        local_rank=_env_int(environ, "LOCAL_RANK"),
        world_size=world_size,
        local_world_size=local_world_size,
        num_nodes=None if spans_known else _env_int(environ, "SLURM_NNODES"),
        cuda_visible_devices=environ.get("CUDA_VISIBLE_DEVICES"),
        omp_num_threads=environ.get("OMP_NUM_THREADS"),
        master_addr=environ.get("MASTER_ADDR"),
        master_port=environ.get("MASTER_PORT"),
        launcher=detect_launcher(environ),
    )
