"""EDGE: ``vllm_ext``'s construction: the skeleton (:mod:`lm_eval_ext.plan.prepare`) with vLLM's build
step, and what the engine needs from the plan before it starts.

``plan_build(config)``: the machine (described under a dry run, else detected), the model facts
(the one loader, hub fallback included), :func:`lm_eval_ext.vllm.build.describe_vllm_build` (the
planner with ``backend="vllm"``, then every replica's engine arguments and pinning), the plan logged
on rank 0, and under ``LM_EVAL_EXT_DRY_RUN`` the description written and the process stopped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import partial
from typing import Any

from lm_eval_ext.errors import ConfigError
from lm_eval_ext.plan.facts import ModelFacts
from lm_eval_ext.plan.hardware import Hardware
from lm_eval_ext.plan.prepare import ModelSource, Settled, prepare
from lm_eval_ext.vllm.build import VllmBuild, describe_vllm_build, engine_args
from lm_eval_ext.vllm.config import VllmExtConfig
from lm_eval_ext.vllm.sizes import VllmSizes

logger = logging.getLogger(__name__)


def plan_build(config: VllmExtConfig, *, environ: Mapping[str, str] = os.environ,
               hardware: Hardware | None = None) -> VllmBuild:
    """The build description of this run (a dry run stops here); ``hardware`` replaces the machine."""
    return prepare(partial(_settle, config), partial(_build, config), environ=environ, hardware=hardware).built


def _settle(config: VllmExtConfig, hardware: Hardware) -> Settled[list[int] | None]:
    """The CPU cores this process may pin replicas to (its affinity; None: a described machine's)."""
    cores = None if hardware.described else sorted(os.sched_getaffinity(0))
    source = ModelSource(config.pretrained, config.dtype, config.revision, trust_remote_code=config.trust_remote_code)
    return Settled(hardware, source, cores)


def _build(config: VllmExtConfig, facts: ModelFacts | None, settled: Settled[list[int] | None]) -> VllmBuild:
    return describe_vllm_build(facts, settled.hardware, config, cpu_cores=settled.choices)


def read_hf_config(config: VllmExtConfig) -> Any:
    """The transformers config stock ``VLLM`` keeps (its pad-token rule reads it)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(
        config.pretrained, trust_remote_code=config.trust_remote_code, revision=config.revision
    )


def check_buildable_here(build: VllmBuild) -> None:
    """vllm_ext starts the replicas of this node only; replicas of other nodes would never run."""
    nodes = [n for n in build.nodes_used if n is not None]
    if len(nodes) > 1:
        per_node = sum(r.node == 0 for r in build.replicas)
        raise ConfigError(
            f"data_parallel_size={build.sizes.data_parallel_size} puts replicas on {len(nodes)} nodes, but vllm_ext "
            f"starts replicas on its own node only; use data_parallel_size={per_node} (this node), or "
            "pipeline_parallel_size over nodes with distributed_executor_backend=ray (see docs/vllm.md)")


def pin_in_process(env: dict[str, str]) -> None:
    """The in-process engine's pinning goes into this process's environment (vLLM's workers read
    it); a value the user set wins and is kept."""
    for name, value in env.items():
        if name in os.environ and os.environ[name] != value:
            logger.warning("vllm_ext: keeping %s=%s from the environment (the plan would set %s)",
                           name, os.environ[name], value)
            continue
        if name not in os.environ:
            logger.info("vllm_ext: %s=%s (planned pinning)", name, value)
            os.environ[name] = value


def planned_model_config(config: VllmExtConfig, sizes: VllmSizes) -> Any:
    """vLLM's own ``ModelConfig`` for this run, from config.json without weights (under a second):
    the dtype every engine of the run will use, and the longest context vLLM allows for the model
    (``max_model_len`` left to vLLM, so that a larger request is refused by our check, with the fix)."""
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(**{**engine_args(config, sizes), "max_model_len": None}).create_model_config()
