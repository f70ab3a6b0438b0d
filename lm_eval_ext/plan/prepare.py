"""EDGE: the construction skeleton both backends compose: machine -> model facts -> plan and build ->
the plan logged on rank 0 -> a dry run stops.

:func:`prepare` is written once. A backend hands it two steps and gets back what it builds from:

- ``settle(hardware) -> Settled``: its settings read against the machine (``hf_ext``: device,
  dtype, the GPUs the planner may use, the launch checks; ``vllm_ext``: the CPU cores it may pin),
  and the :class:`ModelSource` whose facts it needs;
- ``build(facts, settled) -> Built``: its policy and build description (``hf_ext``:
  :func:`lm_eval_ext.plan.layout.build_layout`; ``vllm_ext``: :func:`lm_eval_ext.vllm.prepare.plan_build`).

The machine is the one described for a dry run, else the detected one
(:func:`lm_eval_ext.plan.detect.machine`); the facts come from the one loader
(:func:`lm_eval_ext.plan.model_facts.load_model_facts`, with the hub fallback unless offline);
under ``LM_EVAL_EXT_DRY_RUN`` the build description is written and the process stops here,
before weights, engines or process groups.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.detect import machine
from lm_eval_ext.plan.dry_run import finish_dry_run, is_dry_run
from lm_eval_ext.plan.facts import ModelFacts
from lm_eval_ext.plan.hardware import Hardware
from lm_eval_ext.plan.model_facts import hub_offline, load_model_facts
from lm_eval_ext.plan.types import Plan
from lm_eval_ext.units import format_bytes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where the model's config is and in which dtype it runs: what the facts loader reads."""

    pretrained: str
    dtype: str
    revision: str | None = None
    subfolder: str = ""
    trust_remote_code: bool = False
    optional: bool = False
    """The model may have no config.json (a bare GGUF file): then no facts, and the backend builds
    stock placement instead of failing."""


C = TypeVar("C")


@dataclass(frozen=True)
class Settled(Generic[C]):
    hardware: Hardware
    """The machine as the backend plans on it (e.g. ``device=cpu`` hides the GPUs)."""
    source: ModelSource
    choices: C
    """What the backend resolved against the machine, handed on to its build step."""


class Built(Protocol):
    """What a backend's build step returns (:class:`~lm_eval_ext.plan.build.Layout`,
    :class:`~lm_eval_ext.vllm.build.VllmBuild`)."""

    @property
    def plan(self) -> Plan | None: ...

    def to_json(self) -> dict[str, Any]:
        """What a dry run writes."""

    def plan_warnings(self) -> list[str]:
        """Warnings logged with the plan beyond its own (e.g. the launch checks')."""

    def plan_details(self) -> list[str]:
        """Lines logged after the plan's reasons (e.g. the memory map, the engine sizes)."""


B = TypeVar("B", bound=Built)


@dataclass(frozen=True)
class Prepared(Generic[B]):
    hardware: Hardware
    facts: ModelFacts | None
    built: B


def prepare(settle: Callable[[Hardware], Settled[C]], build: Callable[[ModelFacts | None, Settled[C]], B], *,
            environ: Mapping[str, str] = os.environ, hardware: Hardware | None = None) -> Prepared[B]:
    """The skeleton; ``hardware`` replaces the machine (tests), ``environ`` the process environment."""
    settled = settle(hardware or machine(environ))
    facts = load_facts(settled.source, environ)
    built = build(facts, settled)
    hardware = settled.hardware
    if built.plan is not None and hardware.launch.rank == 0:
        log_plan(built.plan, hardware, warnings=built.plan_warnings(), details=built.plan_details())
    if is_dry_run(environ):
        finish_dry_run(built.to_json(), rank=hardware.launch.rank, world_size=hardware.launch.world_size,
                       environ=environ)
    return Prepared(hardware, facts, built)


def load_facts(source: ModelSource, environ: Mapping[str, str] = os.environ) -> ModelFacts | None:
    """The facts of ``source``; None only for an optional source without a config.json."""
    try:
        return load_model_facts(source.pretrained, source.dtype, revision=source.revision,
                                subfolder=source.subfolder, trust_remote_code=source.trust_remote_code,
                                download=not (source.optional or hub_offline(environ)))
    except UserError:
        if not source.optional:
            raise
    logger.warning("planner skipped: %s has no config.json beside the GGUF file; stock placement", source.pretrained)
    return None


def log_plan(plan: Plan, hardware: Hardware, *, warnings: Sequence[str] = (), details: Sequence[str] = ()) -> None:
    """The plan, why, and its warnings, in the run's log (once: rank 0 calls this)."""
    logger.info("plan: %s %s on %s, %d replica(s) x %d GPU(s), weights %s (%s)", plan.backend, plan.strategy.value,
                hardware.describe(), plan.num_replicas, plan.gpus_per_replica, format_bytes(plan.weights_bytes),
                plan.dtype)
    for reason in plan.reasons:
        logger.info("plan: %s", reason)
    for warning in (*plan.warnings, *warnings):
        logger.warning("plan: %s", warning)
    for detail in details:
        logger.info("plan: %s", detail)
