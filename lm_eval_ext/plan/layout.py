"""EDGE: turn a plan into what ``hf_ext`` builds: the build description (:mod:`lm_eval_ext.plan.build`).

``build_layout(config)`` is the one call ``hf/adapter.py`` makes, before HFLM loads anything: it
reads the machine (detected, or described under a dry run: :mod:`lm_eval_ext.dry_run`), resolves
``device``/``dtype``, runs the preflight checks, plans (``strategy=auto``) or checks the user's
strategy, logs the plan once on rank 0, and returns a :class:`Layout` holding the build description
the adapter builds from. Under ``LM_EVAL_EXT_DRY_RUN=PATH`` it writes that description and exits
here, before torch.cuda, accelerate or a process group is touched. Otherwise it sets
``OMP_NUM_THREADS`` when unset.

Explicit settings win: ``strategy=...``, ``parallelize=True`` (read as model_split),
``max_memory_per_gpu``, ``max_cpu_memory`` and a pinned ``device=cuda:N`` go into the request; a
combination that cannot work is refused with the fix instead of being silently changed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any

from lm_eval_ext import dry_run
from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.build import (
    SPLIT_STRATEGIES, HfBuild, Place, hf_build, place_of, resolve_device, resolve_dtype, unpinned_device,
)
from lm_eval_ext.plan.detect import detect_hardware, read_launch_env
from lm_eval_ext.plan.hardware import Hardware, LaunchEnv
from lm_eval_ext.plan.types import Plan, PlanRequest, Strategy
from lm_eval_ext.units import format_bytes, parse_bytes

logger = logging.getLogger("lm_eval_ext.plan.layout")

_SPLIT = SPLIT_STRATEGIES


@dataclass(frozen=True)
class Layout:
    plan: Plan | None
    """None only when the model cannot be sized from a config (a bare GGUF file): stock placement."""
    device: str
    """The ``device`` handed to HFLM (inputs go there; accelerate hooks move them along a split)."""
    accelerate_args: dict[str, Any] | None
    """``device_map``/``max_memory``/``offload_folder`` of a split; None: one device per process."""
    build: HfBuild | None = None
    """The complete build description; None with ``plan``."""
    hflm_kwargs: dict[str, Any] = field(default_factory=dict)
    """What the adapter hands to HFLM (the build's, or the config's when there is no plan)."""
    launch: LaunchEnv | None = None
    """This process's launch on a real (not described) machine: the adapter joins its process group."""

    @property
    def strategy_name(self) -> str:
        """The strategy built (``single`` for stock placement); decides what fits, so budgets key on it."""
        return self.plan.strategy.value if self.plan else Strategy.SINGLE.value

    @property
    def parallelize(self) -> bool:
        return self.accelerate_args is not None

    def hflm_overrides(self) -> dict[str, Any]:
        return {"device": self.device, "parallelize": self.parallelize}

    def placement_kwargs(self) -> dict[str, Any] | None:
        """What ``from_pretrained`` gets for placement (HFLM's ``_get_accelerate_args``); None: stock."""
        return self.build.placement_kwargs() if self.build is not None else None

    def model_info(self) -> dict[str, Any]:
        """What goes into the results' config: the plan, the memory map and the build description."""
        info: dict[str, Any] = {"lm_eval_ext_plan": self.plan.to_json() if self.plan else None}
        if self.accelerate_args:
            info["lm_eval_ext_max_memory"] = {str(k): v for k, v in self.accelerate_args["max_memory"].items()}
        if self.build is not None:
            info["lm_eval_ext_build"] = self.build.to_json()
        return info


def plan_request(config: Any, hardware: Hardware) -> PlanRequest:
    """The user's hf_ext settings as a planner request; the launch fixes the process count."""
    strategy = config.strategy
    if config.parallelize and not hardware.gpus:
        raise UserError("parallelize=True splits a model over GPUs, and none is visible; drop parallelize "
                        "(hf_ext plans the CPU run itself), or pass strategy=cpu_offload to spill weights to disk")
    if config.parallelize and strategy == "auto":
        strategy = "hybrid" if hardware.launch.num_processes > 1 else "model_split"
    cap = config.max_memory_per_gpu
    ram = config.max_cpu_memory
    return PlanRequest(
        backend="hf", strategy=strategy, num_processes=hardware.launch.num_processes,
        max_memory_per_gpu_bytes=parse_bytes(cap, what="max_memory_per_gpu") if cap else None,
        max_cpu_memory_bytes=parse_bytes(ram, what="max_cpu_memory") if ram else None,
    )


def _visible_hardware(device: str, hardware: Hardware) -> Hardware:
    """``device=cpu`` plans without GPUs; ``device=cuda:N`` plans on that one card."""
    if device.startswith("cpu"):
        return replace(hardware, gpus=())
    if device.startswith("cuda:"):
        index = int(device.split(":", 1)[1])
        if index >= len(hardware.gpus):
            raise UserError(f"device={device} does not exist: {len(hardware.gpus)} GPU(s) are visible")
        return replace(hardware, gpus=(hardware.gpus[index],))
    return hardware


def layout_from_plan(plan: Plan, *, device: str, hardware: Hardware, offload_folder: str,
                     hflm_kwargs: Mapping[str, Any] | None = None, place: Place | None = None) -> Layout:
    """Plan -> Layout around the build description of this process (``place``: from the launch)."""
    place = place or place_of(hardware.launch)
    build = hf_build(plan, hardware, place, hflm_kwargs={"device": device, **(hflm_kwargs or {})},
                     offload_folder=offload_folder)
    split = build.placement.parallelize
    return Layout(plan, build.placement.device, build.placement_kwargs() if split else None, build,
                  dict(build.hflm_kwargs))


def apply_omp_default(hardware: Hardware, environ: MutableMapping[str, str] = os.environ) -> int | None:
    from lm_eval_ext.plan.preflight import omp_num_threads_to_set

    threads = omp_num_threads_to_set(hardware)
    if threads is None:
        return None
    environ["OMP_NUM_THREADS"] = str(threads)
    if environ is os.environ:
        import torch  # OpenMP reads the variable only at start-up, and torch may have started it

        torch.set_num_threads(threads)
    logger.info("OMP_NUM_THREADS was unset; set to %d (%d cores / %d local processes)",
                threads, hardware.num_cpu_cores, hardware.launch.num_local_processes)
    return threads


def machine(environ: Mapping[str, str] = os.environ) -> Hardware:
    """The described machine of a dry run, else the detected one."""
    return dry_run.described_hardware(read_launch_env(environ), environ) or detect_hardware(environ)


def build_layout(config: Any, *, device: str | None = None, dtype: str | None = None,
                 environ: Mapping[str, str] = os.environ, hardware: Hardware | None = None) -> Layout:
    """``device``/``dtype`` default to the config's (``auto`` resolved against the machine)."""
    from lm_eval_ext.plan import preflight
    from lm_eval_ext.plan.planner import plan

    hardware = hardware or machine(environ)
    requested = config.device if device is None else device
    device = _unpin(requested, hardware)
    device = resolve_device(device, hardware)
    if device != requested and requested != "auto":
        logger.warning("device=%s requested but no CUDA device is visible; using cpu", requested)
    dtype = resolve_dtype(config.dtype if dtype is None else dtype, device, hardware)
    hflm_kwargs = config.hflm_kwargs(device=device, dtype=dtype)
    hardware = _visible_hardware(device, hardware)
    real_launch = [] if hardware.described else preflight.check_rendezvous(hardware.launch)
    preflight.raise_errors(preflight.check_variables(hardware.launch) + real_launch)
    facts = _load_facts(config, dtype)
    if facts is None:
        _finish_if_dry_run({"backend": "hf", "plan": None, "hflm": hflm_kwargs}, hardware, environ)
        return Layout(None, device, None, None, hflm_kwargs)
    try:
        chosen = plan(facts, hardware, plan_request(config, hardware))
    except UserError as exc:
        if device.startswith("cuda:"):  # the pin hid the other GPUs from the planner: say so
            raise UserError(f"{exc} (device={device} limits the plan to that one GPU; drop device "
                            "or use device=cuda to let it use all visible GPUs)") from None
        raise
    findings = preflight.check(hardware, chosen)
    preflight.raise_errors(findings)
    layout = layout_from_plan(chosen, device=device, hardware=hardware, offload_folder=config.offload_folder,
                              hflm_kwargs=hflm_kwargs)
    if (hardware.launch.rank or 0) == 0:
        _log_plan(layout, findings)
    _finish_if_dry_run(layout.build.to_json(), hardware, environ)
    if isinstance(environ, MutableMapping):
        apply_omp_default(hardware, environ)
    return layout if hardware.described else replace(layout, launch=hardware.launch)


def _unpin(requested: str, hardware: Hardware) -> str:
    device = unpinned_device(requested, hardware.launch)
    if device != requested and hardware.launch.num_processes > 1:
        logger.warning("device=%s is not used under a launch of %d processes: each process takes the GPUs "
                       "of its own rank (as stock hf does)", requested, hardware.launch.num_processes)
    elif device != requested:
        logger.info("device=%s (lm-eval's default) read as cuda: the plan may use every visible GPU; "
                    "CUDA_VISIBLE_DEVICES=0 keeps it on that one", requested)
    return device


def _finish_if_dry_run(build: dict, hardware: Hardware, environ: Mapping[str, str]) -> None:
    if dry_run.is_dry_run(environ):
        place = place_of(hardware.launch)
        dry_run.finish_dry_run(build, rank=place.rank, world_size=place.world_size, environ=environ)


def _load_facts(config: Any, dtype: str):
    from lm_eval_ext.plan.model_facts import load_model_facts

    kwargs = dict(revision=config.revision, subfolder=config.subfolder, trust_remote_code=config.trust_remote_code)
    try:
        return load_model_facts(config.pretrained, dtype, **kwargs)
    except UserError:
        if config.gguf_file and config.strategy == "auto":
            logger.warning("planner skipped: %s has no config.json beside the GGUF file; stock placement",
                           config.pretrained)
            return None
        if os.path.exists(config.pretrained) or environ_offline():
            raise
    from huggingface_hub import hf_hub_download  # not cached yet: HFLM would download it anyway

    path = hf_hub_download(config.pretrained, "config.json", revision=config.revision,
                           subfolder=config.subfolder or None)
    return load_model_facts(path, dtype, trust_remote_code=config.trust_remote_code)


def environ_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _log_plan(layout: Layout, findings: list) -> None:
    plan = layout.plan
    logger.info("plan: %s %s, %d replica(s) x %d GPU(s), weights %s (%s)", plan.backend, plan.strategy.value,
                plan.num_replicas, plan.gpus_per_replica, format_bytes(plan.weights_bytes), plan.dtype)
    for reason in plan.reasons:
        logger.info("plan: %s", reason)
    for warning in plan.warnings + tuple(f.message for f in findings if f.level == "warning"):
        logger.warning("plan: %s", warning)
    if layout.accelerate_args:
        logger.info("plan: device_map=auto with max_memory=%s", layout.accelerate_args["max_memory"])
