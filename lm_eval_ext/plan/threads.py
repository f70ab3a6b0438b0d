"""EDGE: OpenMP threads per process, set when the user (or launcher) left ``OMP_NUM_THREADS`` unset.

The value is :func:`lm_eval_ext.plan.preflight.omp_num_threads_to_set` (cores / local processes):
unset, every process would use every core and N processes would fight over them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

from lm_eval_ext.plan.hardware import Hardware
from lm_eval_ext.plan.preflight import omp_num_threads_to_set

logger = logging.getLogger(__name__)


def apply_omp_default(hardware: Hardware, environ: MutableMapping[str, str] = os.environ) -> int | None:
    """Export the default into ``environ`` (and torch's pool when it is this process's); the value set, or None."""
    threads = omp_num_threads_to_set(hardware)
    if threads is None:
        return None
    environ["OMP_NUM_THREADS"] = str(threads)
    if environ is os.environ:
        import torch  # OpenMP reads the variable only at start-up, and torch may have started it

        torch.set_num_threads(threads)
    logger.info("OMP_NUM_THREADS was unset; set to %d (%d cores / %d local processes)",
                threads, hardware.num_cpu_cores, hardware.launch.local_world_size)
    return threads
