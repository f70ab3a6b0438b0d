"""EDGE: turn a plan into what ``hf_ext`` builds (HFLM kwargs, device_map, max_memory).

``build_layout(config, device=..., dtype=...)`` is the one call ``adapters/hf.py`` makes: it detects
the hardware, runs the preflight checks, plans (``strategy=auto``) or checks the user's strategy,
logs the plan once on rank 0, sets ``OMP_NUM_THREADS`` when unset, and returns a :class:`Layout`.

Explicit settings win: ``strategy=...``, ``parallelize=True`` (read as model_split),
``max_memory_per_gpu``, ``max_cpu_memory`` and a pinned ``device=cuda:N`` go into the request; a
combination that cannot work is refused with the fix instead of being silently changed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, replace
from typing import Any

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.detect import detect_hardware
from lm_eval_ext.plan.hardware import Hardware
from lm_eval_ext.plan.types import Plan, PlanRequest, Strategy
from lm_eval_ext.units import format_bytes, parse_bytes

logger = logging.getLogger("lm_eval_ext.plan.layout")

#: strategies that hand accelerate a device_map instead of putting the model on one device
_SPLIT = (Strategy.MODEL_SPLIT, Strategy.HYBRID, Strategy.CPU_OFFLOAD)


@dataclass(frozen=True)
class Layout:
    plan: Plan | None
    """None only when the model cannot be sized from a config (a bare GGUF file): stock placement."""
    device: str
    """The ``device`` handed to HFLM (inputs go there; accelerate hooks move them along a split)."""
    accelerate_args: dict[str, Any] | None
    """``device_map``/``max_memory``/``offload_folder`` for ``from_pretrained``; None: stock placement."""

    @property
    def strategy_name(self) -> str:
        """The strategy built (``single`` for stock placement); decides what fits, so budgets key on it."""
        return self.plan.strategy.value if self.plan else Strategy.SINGLE.value

    @property
    def parallelize(self) -> bool:
        return self.accelerate_args is not None

    def hflm_overrides(self) -> dict[str, Any]:
        return {"device": self.device, "parallelize": self.parallelize}

    def model_info(self) -> dict[str, Any]:
        """What goes into the results' config: the plan, and the memory map actually handed over."""
        info: dict[str, Any] = {"lm_eval_ext_plan": self.plan.to_json() if self.plan else None}
        if self.accelerate_args:
            info["lm_eval_ext_max_memory"] = {str(k): v for k, v in self.accelerate_args["max_memory"].items()}
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


def layout_from_plan(plan: Plan, *, device: str, hardware: Hardware, offload_folder: str) -> Layout:
    """Pure mapping plan -> Layout. Each process of a hybrid run takes its own contiguous slice."""
    if plan.strategy not in _SPLIT:
        if plan.device == "cpu":
            return Layout(plan, "cpu", None)
        return Layout(plan, device if device.startswith("cuda") else "cuda", None)
    first = (hardware.launch.local_rank or 0) * plan.gpus_per_replica if plan.strategy == Strategy.HYBRID else 0
    max_memory: dict[int | str, int] = {
        first + i: int(b) for i, b in enumerate(plan.max_memory_per_gpu_bytes)}
    if plan.max_cpu_memory_bytes:
        max_memory["cpu"] = int(plan.max_cpu_memory_bytes)
    args = {"device_map": "auto", "max_memory": max_memory, "offload_folder": offload_folder}
    return Layout(plan, "cpu" if plan.device == "cpu" else f"cuda:{first}", args)


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


def build_layout(config: Any, *, device: str, dtype: str, environ: Mapping[str, str] = os.environ,
                 hardware: Hardware | None = None) -> Layout:
    from lm_eval_ext.plan import preflight
    from lm_eval_ext.plan.planner import plan

    hardware = _visible_hardware(device, hardware or detect_hardware(environ))
    real_launch = [] if hardware.described else preflight.check_rendezvous(hardware.launch)
    preflight.raise_errors(preflight.check_variables(hardware.launch) + real_launch)
    facts = _load_facts(config, dtype)
    if facts is None:
        return Layout(None, device, None)
    try:
        chosen = plan(facts, hardware, plan_request(config, hardware))
    except UserError as exc:
        if device.startswith("cuda:"):  # the pin hid the other GPUs from the planner: say so
            raise UserError(f"{exc} (device={device} limits the plan to that one GPU; drop device "
                            "or use device=cuda to let it use all visible GPUs)") from None
        raise
    findings = preflight.check(hardware, chosen)
    preflight.raise_errors(findings)
    layout = layout_from_plan(chosen, device=device, hardware=hardware, offload_folder=config.offload_folder)
    if (hardware.launch.rank or 0) == 0:
        _log_plan(layout, findings)
    if isinstance(environ, MutableMapping):
        apply_omp_default(hardware, environ)
    if not hardware.described:
        from lm_eval_ext.hf.rendezvous import join_process_group

        join_process_group(hardware.launch, environ)
    return layout


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
