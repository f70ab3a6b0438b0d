"""``srun`` as a launcher, for real: two processes on 127.0.0.1 started with the variables srun sets
for a two-task step (``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``, ``SLURM_NODELIST``,
``SLURM_JOB_ID``; no torchrun, no ``RANK``/``WORLD_SIZE``). Each evaluates its half of the documents by
global rank, they meet at the first host of the node list on the port derived from the job id, and
rank 0's merged samples equal one process."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from tests.dist.test_two_nodes import _check_halves_and_samples, _env, _lm_eval, _run_nodes

from lm_eval_ext.plan.launch_env import SLURM_PORT_BASE, SLURM_PORT_SPAN, slurm_port

BIN = Path(sys.executable).parent


def free_slurm_job_id() -> int:
    """A job id whose derived rendezvous port nothing listens on now."""
    for job_id in range(4242, 4242 + SLURM_PORT_SPAN):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", int(slurm_port(job_id))))
            except OSError:
                continue
            return job_id
    raise AssertionError(f"no free port in {SLURM_PORT_BASE}..{SLURM_PORT_BASE + SLURM_PORT_SPAN}")


def srun_env(base: dict, rank: int, num_tasks: int, job_id: int) -> dict:
    env = _env(base)
    env.pop("MASTER_ADDR", None), env.pop("MASTER_PORT", None)
    env.update(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS=str(num_tasks),
               SLURM_NODELIST="127.0.0.1", SLURM_NNODES="1", SLURM_JOB_ID=str(job_id))
    return env


def test_two_srun_tasks_split_the_documents_by_global_rank(tiny_model_path, one_process, tmp_path, scratch_env):
    out, job_id = tmp_path / "out", free_slurm_job_id()
    command = [str(BIN / "lm-eval-ext"), "run", *_lm_eval(tiny_model_path, out)[2:]]
    logs = _run_nodes([command, command], [srun_env(scratch_env, rank, 2, job_id) for rank in (0, 1)], tmp_path)
    assert f"srun task: rank 0 of 2 (local 0 of 2), rendezvous 127.0.0.1:{slurm_port(job_id)}" in logs
    _check_halves_and_samples(logs, out, one_process)
