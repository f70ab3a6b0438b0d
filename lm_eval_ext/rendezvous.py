"""EDGE: a bounded, announced rendezvous for processes started by hand (RANK/WORLD_SIZE exported).

Stock lm-eval builds its Accelerator with a 52-week process-group timeout, so a rank whose peers
never start waits silently for a year. When no launcher did the rendezvous (``accelerate launch``
and ``torchrun`` do their own, with their own timeouts), this joins the process group first: it
logs what it waits for, waits at most ``LM_EVAL_EXT_RENDEZVOUS_TIMEOUT_S`` (default 300 s) for
every rank to reach ``MASTER_ADDR:MASTER_PORT``, and then hands accelerate an initialised group
(accelerate skips its own init then). Collectives keep lm-eval's long timeout: ranks legitimately
wait for each other while one evaluates longer documents.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.launch import Launch

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "LM_EVAL_EXT_RENDEZVOUS_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 300.0
#: lm-eval's own process-group timeout, kept for collectives after the rendezvous
COLLECTIVE_TIMEOUT = datetime.timedelta(weeks=52)


def rendezvous_timeout_s(environ: Mapping[str, str] = os.environ) -> float:
    value = environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        timeout_s = float(value)
    except ValueError:
        timeout_s = -1.0
    if timeout_s <= 0:
        raise UserError(f"{TIMEOUT_ENV}={value!r} must be a positive number of seconds, e.g. {TIMEOUT_ENV}=600")
    return timeout_s


def needs_own_rendezvous(launch: Launch) -> bool:
    return launch.is_distributed and launch.launcher in ("python", "slurm")


def join_process_group(launch: Launch, environ: Mapping[str, str] = os.environ, *,
                       any_launcher: bool = False, backend: str | None = None) -> bool:
    """Initialise the default process group with a bounded rendezvous; returns whether it did.

    ``any_launcher``: also under torchrun/accelerate (which export the variables but leave the
    group to the program: ``vllm_ext`` has no Accelerator to do it). ``backend``: forced (gloo
    for ``vllm_ext``, whose collectives are a few CPU tensors and objects), else nccl on GPUs."""
    import torch.distributed as dist

    wanted = launch.is_distributed if any_launcher else needs_own_rendezvous(launch)
    if not wanted or not dist.is_available() or dist.is_initialized():
        return False
    timeout_s = rendezvous_timeout_s(environ)
    rank, world_size = launch.rank, launch.world_size
    address = f"{launch.master_addr}:{launch.master_port}"
    waits_for = f"{world_size - 1} other rank(s)" if rank == 0 else "rank 0"
    logger.info("rank %d: waiting up to %.0f s at %s for %s of WORLD_SIZE=%d (%s sets the limit)",
                rank, timeout_s, address, waits_for, world_size, TIMEOUT_ENV)
    try:
        store = dist.TCPStore(launch.master_addr, int(launch.master_port), world_size, is_master=rank == 0,
                              timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=True)
    except (RuntimeError, OSError, ValueError) as exc:  # DistStoreError is a RuntimeError
        how = ("start all tasks with one `srun` (they meet at the first host of the node list, on MASTER_PORT or "
               "the port of the job id)" if launch.launcher == "slurm" else
               "start every rank with the same MASTER_ADDR/MASTER_PORT (or use `accelerate launch`/`torchrun`)")
        raise UserError(
            f"rank {rank} waited {timeout_s:.0f} s at {address} for {waits_for} of WORLD_SIZE={world_size}, "
            f"in vain ({str(exc).splitlines()[0][:160]}); {how}, or raise {TIMEOUT_ENV}"
        ) from None
    backend = backend or ("nccl" if _use_nccl(environ) else "gloo")
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)
    logger.info("rank %d: all %d ranks joined at %s (%s)", rank, world_size, address, backend)
    return True


def _use_nccl(environ: Mapping[str, str]) -> bool:
    import torch

    return torch.cuda.is_available() and environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes")
