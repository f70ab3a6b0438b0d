"""EDGE: the one reader of the launcher's variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ...,
and SLURM's ``SLURM_PROCID``/``SLURM_LOCALID``/``SLURM_NTASKS`` under ``srun``).

Every part of the package that asks "which rank am I" gets a :class:`~lm_eval_ext.plan.launch.Launch`
from :func:`read_launch_env` (or from the hardware it is part of).

``srun`` starts every task itself (one per GPU, say) and exports SLURM's names only. A task of an
``srun`` step that no torch launcher runs inside (no ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``) is read
from them the way torchrun's are: global rank ``SLURM_PROCID``, local rank ``SLURM_LOCALID``, world
size ``SLURM_STEP_NUM_TASKS`` (else ``SLURM_NTASKS``), tasks on this node from ``SLURM_GTIDS`` (else
``SLURM_STEP_TASKS_PER_NODE``), rendezvous host the first host of ``SLURM_STEP_NODELIST`` (else
``SLURM_JOB_NODELIST``/``SLURM_NODELIST``) and port ``MASTER_PORT``, else one derived from
``SLURM_JOB_ID`` (:func:`slurm_port`). :func:`export_torch_names` then writes torch's names for
accelerate and torch.distributed, which read only those.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.hostlist import HostListError, first_host, tasks_on_node
from lm_eval_ext.plan.launch import Launch

logger = logging.getLogger(__name__)

#: what torchrun exports; any of them means a torch launcher (or the user) set the ranks
TORCH_RANK_NAMES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
#: rendezvous ports derived from the job id fall in [SLURM_PORT_BASE, SLURM_PORT_BASE + SLURM_PORT_SPAN),
#: below Linux's ephemeral range (32768-60999), so a port the kernel hands out never collides
SLURM_PORT_BASE, SLURM_PORT_SPAN = 15000, 10000


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} must be an integer; unset it, or let the launcher "
                        "(srun, torchrun, accelerate launch) set it") from None


def _first_int(environ: Mapping[str, str], *names: str) -> tuple[str, int] | tuple[None, None]:
    for name in names:
        value = _env_int(environ, name)
        if value is not None:
            return name, value
    return None, None


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


def is_srun_task(environ: Mapping[str, str]) -> bool:
    """A task ``srun`` started, with no torch launcher inside it: SLURM's variables give the ranks."""
    return detect_launcher(environ) == "slurm" and not any(name in environ for name in TORCH_RANK_NAMES)


def slurm_port(job_id: int) -> str:
    """The rendezvous port every task of job ``job_id`` derives alike (``MASTER_PORT`` wins): two
    jobs on one node differ unless their ids are a multiple of :data:`SLURM_PORT_SPAN` apart."""
    return str(SLURM_PORT_BASE + job_id % SLURM_PORT_SPAN)


def _slurm_host(environ: Mapping[str, str]) -> str | None:
    for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        if environ.get(name, "").strip():
            try:
                return first_host(environ[name])
            except HostListError as exc:
                raise UserError(f"{name}={environ[name]!r} is not a SLURM host list ({exc}); SLURM writes e.g. "
                                "node[01-04]; set MASTER_ADDR to the first node's host name") from None
    return None


def _slurm_local_world(environ: Mapping[str, str], world_size: int, num_nodes: int | None) -> tuple[int, bool]:
    """Tasks on this node, and whether SLURM said so (``SLURM_GTIDS`` lists this node's tasks)."""
    gtids = environ.get("SLURM_GTIDS", "").strip()
    if gtids:
        return len(gtids.split(",")), True
    node = _env_int(environ, "SLURM_NODEID") or 0
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        count = tasks_on_node(environ.get(name, ""), node)
        if count is not None:
            return count, True
    return max(1, world_size // max(1, num_nodes or 1)), False


def _is_batch_step(environ: Mapping[str, str], world_size: int) -> bool:
    """The batch script itself (``sbatch`` without ``srun``): SLURM_NTASKS counts the job's tasks,
    but only this one process runs; ``SLURM_GTIDS`` then names one task where the node has more."""
    if world_size <= 1 or "SLURM_STEP_NUM_TASKS" in environ or not environ.get("SLURM_GTIDS", "").strip():
        return False
    node = _env_int(environ, "SLURM_NODEID") or 0
    expected = tasks_on_node(environ.get("SLURM_TASKS_PER_NODE", ""), node)
    return len(environ["SLURM_GTIDS"].split(",")) == 1 and (expected or 1) > 1


def read_slurm_launch(environ: Mapping[str, str]) -> Launch:
    """This ``srun`` task's launch (see the module docstring)."""
    world_name, world_size = _first_int(environ, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
    world_size = world_size or 1
    num_nodes = _first_int(environ, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")[1]
    common = dict(launcher="slurm", cuda_visible_devices=environ.get("CUDA_VISIBLE_DEVICES"),
                  omp_num_threads=environ.get("OMP_NUM_THREADS"))
    if _is_batch_step(environ, world_size):
        logger.info("SLURM batch step (no srun): one process, although SLURM_NTASKS=%d; start the tasks with "
                    "`srun` to shard documents over them", world_size)
        return Launch.resolve(**common)
    rank = _env_int(environ, "SLURM_PROCID") or 0
    if not 0 <= rank < world_size:
        raise UserError(f"SLURM_PROCID={rank} is outside {world_name or 'SLURM_NTASKS'}={world_size} (task ids are "
                        f"0..{world_size - 1}); start the tasks with `srun`, or unset hand-set SLURM_* variables")
    local_world, _ = _slurm_local_world(environ, world_size, num_nodes)
    port = environ.get("MASTER_PORT")
    job_id = _env_int(environ, "SLURM_JOB_ID")
    return Launch.resolve(
        rank=rank, local_rank=_env_int(environ, "SLURM_LOCALID") or 0, world_size=world_size,
        local_world_size=local_world, num_nodes=num_nodes,
        master_addr=environ.get("MASTER_ADDR") or (_slurm_host(environ) if world_size > 1 else None),
        master_port=port or (slurm_port(job_id) if job_id is not None and world_size > 1 else None), **common,
    )


def read_launch_env(environ: Mapping[str, str] = os.environ) -> Launch:
    """This process's launch; without launcher variables, one process (rank 0 of 1)."""
    if is_srun_task(environ):
        return read_slurm_launch(environ)
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


def export_torch_names(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Under ``srun`` with several tasks, export torch's names (``RANK``, ``LOCAL_RANK``,
    ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) as torchrun would, for
    accelerate and torch.distributed; returns what was set (nothing outside such a task)."""
    if not is_srun_task(environ):
        return {}
    launch = read_slurm_launch(environ)
    if not launch.is_distributed:
        return {}
    names = {"RANK": launch.rank, "LOCAL_RANK": launch.local_rank, "WORLD_SIZE": launch.world_size,
             "LOCAL_WORLD_SIZE": launch.local_world_size, "MASTER_ADDR": launch.master_addr,
             "MASTER_PORT": launch.master_port}
    exported = {name: str(value) for name, value in names.items() if value is not None and name not in environ}
    environ.update(exported)
    if launch.rank == 0:
        logger.info("srun task: rank %d of %d (local %d of %d), rendezvous %s:%s, from SLURM's variables",
                    launch.rank, launch.world_size, launch.local_rank, launch.local_world_size, launch.master_addr,
                    launch.master_port)
    return exported
