"""EDGE: ``hf_ext``'s construction: the skeleton (:mod:`lm_eval_ext.plan.prepare`) with hf's steps.

``build_layout(config)`` is the one call ``hf/adapter.py`` makes, before HFLM loads anything:

1. the machine (described under a dry run, else detected);
2. settle: ``device``/``dtype`` resolved against it (:mod:`lm_eval_ext.plan.hf_settings`), the GPUs
   the planner may use, the launch checks (:mod:`lm_eval_ext.plan.preflight`);
3. the model facts (config.json only; a bare GGUF file has none: stock placement);
4. build: plan (``strategy=auto``) or check the user's strategy, check the plan against the
   launch, and the :class:`~lm_eval_ext.plan.build.Layout` around this process's build description;
5. the plan logged on rank 0; under ``LM_EVAL_EXT_DRY_RUN=PATH`` the description written and the
   process stopped, before torch.cuda, accelerate or a process group is touched;
6. ``OMP_NUM_THREADS`` set when unset (:mod:`lm_eval_ext.plan.threads`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan import preflight
from lm_eval_ext.plan.build import Layout, layout_from_plan
from lm_eval_ext.plan.facts import ModelFacts
from lm_eval_ext.plan.hardware import Hardware
from lm_eval_ext.plan.detect import mps_available
from lm_eval_ext.plan.hf_settings import (
    check_device_kind, plan_request, resolve_dtype, settle_device, visible_hardware,
)
from lm_eval_ext.plan.planner import plan
from lm_eval_ext.plan.prepare import ModelSource, Settled, prepare
from lm_eval_ext.plan.threads import apply_omp_default


@dataclass(frozen=True)
class HfChoices:
    device: str
    hflm_kwargs: dict[str, Any]


def build_layout(config: Any, *, device: str | None = None, dtype: str | None = None,
                 environ: Mapping[str, str] = os.environ, hardware: Hardware | None = None) -> Layout:
    """``device``/``dtype`` default to the config's (``auto`` resolved against the machine)."""
    prepared = prepare(partial(_settle, config, device, dtype), partial(_build, config),
                       environ=environ, hardware=hardware)
    if isinstance(environ, MutableMapping):
        apply_omp_default(prepared.hardware, environ)
    layout = prepared.built
    return layout if prepared.hardware.described else replace(layout, launch=prepared.hardware.launch)


def _settle(config: Any, device: str | None, dtype: str | None, hardware: Hardware) -> Settled[HfChoices]:
    requested = config.device if device is None else device
    check_device_kind(requested, mps_available=requested.startswith("mps") and mps_available())
    device = settle_device(requested, hardware)
    dtype = resolve_dtype(config.dtype if dtype is None else dtype, device, hardware)
    hardware = visible_hardware(device, hardware)
    real_launch = [] if hardware.described else preflight.check_rendezvous(hardware.launch)
    preflight.raise_errors(preflight.check_variables(hardware.launch) + real_launch)
    source = ModelSource(config.pretrained, dtype, config.revision, config.subfolder, config.trust_remote_code,
                         optional=bool(config.gguf_file) and config.strategy == "auto")
    return Settled(hardware, source, HfChoices(device, config.hflm_kwargs(device=device, dtype=dtype)))


def _build(config: Any, facts: ModelFacts | None, settled: Settled[HfChoices]) -> Layout:
    hardware, device = settled.hardware, settled.choices.device
    if facts is None:
        return Layout(None, device, None, None, settled.choices.hflm_kwargs)
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
                              hflm_kwargs=settled.choices.hflm_kwargs)
    return replace(layout, preflight_warnings=tuple(f.message for f in findings if f.level == "warning"))
