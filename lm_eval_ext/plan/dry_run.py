"""EDGE: a described machine and a dry run, for proving layouts where the hardware is absent.

Two variables, read only here:

- ``LM_EVAL_EXT_DRY_RUN=PATH``: the adapter (``hf_ext`` or ``vllm_ext``) plans and builds its complete
  build description (what it would hand to transformers, accelerate, torch.distributed or vLLM),
  writes it as JSON to ``PATH`` and exits with status 0 right before loading weights or starting an
  engine. Under several processes each rank writes its own file: ``PATH`` may contain ``{rank}``;
  otherwise ``.rank{N}`` is put before the suffix when the world has more than one process.
- ``LM_EVAL_EXT_HARDWARE=SPEC`` (e.g. ``8x80GiB``; ``LM_EVAL_EXT_NODES=N`` for several nodes):
  the machine the planner sees instead of the detected one. Honoured **only** in a dry run, so a
  stray variable can never make a real run plan for GPUs it does not have. It describes the GPUs
  of one node; ``CUDA_VISIBLE_DEVICES`` then hides the unlisted ones, as CUDA would (``8x80GiB``
  with ``CUDA_VISIBLE_DEVICES=4,5,6,7`` is four visible GPUs, ordinals 0-3).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from lm_eval_ext.errors import UserError
from lm_eval_ext.files import write_json_atomic
from lm_eval_ext.plan.hardware import Hardware, describe_hardware
from lm_eval_ext.plan.launch import Launch

logger = logging.getLogger(__name__)

DRY_RUN_ENV = "LM_EVAL_EXT_DRY_RUN"
HARDWARE_ENV = "LM_EVAL_EXT_HARDWARE"
NODES_ENV = "LM_EVAL_EXT_NODES"


def is_dry_run(environ: Mapping[str, str] = os.environ) -> bool:
    return bool(environ.get(DRY_RUN_ENV))


def described_hardware(launch: Launch, environ: Mapping[str, str] = os.environ) -> Hardware | None:
    """The machine of ``LM_EVAL_EXT_HARDWARE`` with this process's launch, or None (detect it).

    A described machine outside a dry run is ignored with a warning (see the module docstring).
    """
    spec = environ.get(HARDWARE_ENV)
    if not spec:
        return None
    if not is_dry_run(environ):
        logger.warning("%s=%s is ignored: it is honoured only with %s=PATH (a dry run)",
                       HARDWARE_ENV, spec, DRY_RUN_ENV)
        return None
    nodes_text = environ.get(NODES_ENV) or ""
    try:
        num_nodes = int(nodes_text) if nodes_text else None
    except ValueError:
        raise UserError(f"{NODES_ENV}={nodes_text!r} must be a whole number of nodes, e.g. {NODES_ENV}=2") from None
    if num_nodes is None:  # the launcher's world says how many nodes it spans
        num_nodes = launch.num_nodes
    described = describe_hardware("" if spec.strip().lower() == "cpu" else spec, num_nodes=num_nodes)
    return Hardware(gpus=visible_gpus(described.gpus, launch.cuda_visible_devices), cpu_ram_bytes=described.cpu_ram_bytes,
                    num_cpu_cores=described.num_cpu_cores, num_nodes=num_nodes, launch=launch, described=True)


def visible_gpus(gpus: tuple, cuda_visible_devices: str | None) -> tuple:
    """The described GPUs that ``CUDA_VISIBLE_DEVICES`` (indices) leaves visible, in its order."""
    if cuda_visible_devices is None:
        return gpus
    visible = []
    for part in filter(None, (p.strip() for p in cuda_visible_devices.split(","))):
        if not part.isdigit() or int(part) >= len(gpus):
            raise UserError(f"CUDA_VISIBLE_DEVICES={cuda_visible_devices!r} names GPU {part!r}, but {HARDWARE_ENV} "
                            f"describes {len(gpus)} per node (0..{len(gpus) - 1}); list indices of those")
        visible.append(gpus[int(part)])
    return tuple(visible)


def output_path(rank: int, world_size: int, environ: Mapping[str, str] = os.environ) -> Path:
    raw = environ[DRY_RUN_ENV]
    if "{rank}" in raw:
        return Path(raw.replace("{rank}", str(rank)))
    path = Path(raw)
    if world_size > 1:
        return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")
    return path


def finish_dry_run(build: Mapping[str, Any], *, rank: int = 0, world_size: int = 1,
                   environ: Mapping[str, str] = os.environ) -> NoReturn:
    """Write ``build`` (JSON-able) for this rank and stop the process with status 0."""
    path = output_path(rank, world_size, environ)
    write_json_atomic(path, dict(build), indent=1, sort_keys=True, default=str)
    logger.warning("dry run: build description written to %s; stopping before weights are loaded", path)
    raise SystemExit(0)
