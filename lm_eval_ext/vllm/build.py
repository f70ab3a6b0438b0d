"""PURE: the vLLM build description: (model facts, hardware, launch, config) -> what each replica gets.

:func:`describe_vllm_build` is the one sizing path of ``vllm_ext``. It runs
:func:`lm_eval_ext.plan.planner.plan` with ``backend="vllm"`` (explicit sizes in the config are
constraints; impossible ones raise :class:`~lm_eval_ext.errors.UserError` with the fix) and turns
the plan into the ``vllm.LLM`` keyword arguments of every replica and the environment that pins it
(``CUDA_VISIBLE_DEVICES`` on GPUs, ``VLLM_CPU_OMP_THREADS_BIND`` core groups on CPU). ``vllm_ext``
builds from it, ``lm-eval-ext plan --backend vllm --json`` prints it under ``"build"``, and a dry
run (``LM_EVAL_EXT_DRY_RUN``) writes it, so the three cannot disagree.

Example: Llama-3-70B on 8 x 80 GiB plans tensor 4 x data 2 (see :mod:`lm_eval_ext.plan.vllm_policy`):
two replicas, ``CUDA_VISIBLE_DEVICES`` ``0,1,2,3`` and ``4,5,6,7``, each with
``tensor_parallel_size=4, max_model_len=8192, gpu_memory_utilization=0.9``. On 2 nodes x 4 x 40 GiB
the model needs both nodes: one replica with ``pipeline_parallel_size=2`` on vLLM's Ray backend,
placed by Ray (no ``CUDA_VISIBLE_DEVICES``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from lm_eval_ext.errors import ConfigError
from lm_eval_ext.plan.facts import ModelFacts
from lm_eval_ext.plan.hardware import Hardware
from lm_eval_ext.plan.planner import plan as run_planner
from lm_eval_ext.plan.types import DEFAULT_GPU_MEMORY_UTILIZATION, Plan, PlanRequest
from lm_eval_ext.vllm.config import AUTO, VllmExtConfig
from lm_eval_ext.vllm.sizes import VllmSizes

#: ``distributed_executor_backend`` values vLLM 0.32 accepts (``auto``: ours, resolved here)
EXECUTOR_BACKENDS = ("auto", "ray", "mp", "uni", "external_launcher")


@dataclass(frozen=True)
class ReplicaBuild:
    index: int
    node: int | None
    """Node the replica runs on; None when Ray places it (pipeline stages over several nodes)."""
    env: dict[str, str]
    """Variables that pin the replica to its devices (set in its process before vLLM starts)."""
    engine_args: dict[str, Any]
    """Keyword arguments for ``vllm.LLM``."""

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "node": self.node, "env": dict(self.env), "engine_args": dict(self.engine_args)}


@dataclass(frozen=True)
class VllmBuild:
    plan: Plan
    sizes: VllmSizes
    replicas: tuple[ReplicaBuild, ...]

    @property
    def mode(self) -> str:
        return "in_process" if len(self.replicas) == 1 else "data_parallel"

    @property
    def nodes_used(self) -> tuple[int | None, ...]:
        return tuple(sorted({r.node for r in self.replicas}, key=lambda n: -1 if n is None else n))

    def to_json(self) -> dict[str, Any]:
        return {"backend": "vllm", "mode": self.mode, "sizes": self.sizes.as_dict(), "plan": self.plan.to_json(),
                "replicas": [r.to_json() for r in self.replicas]}

    def plan_warnings(self) -> list[str]:
        return []

    def plan_details(self) -> list[str]:
        """The engine sizes, logged with the plan (:func:`lm_eval_ext.plan.prepare.log_plan`)."""
        sizes = {k: v for k, v in self.sizes.as_dict().items() if k != "reasons"}
        return [f"vllm_ext sizes {json.dumps(sizes)}"]


def _explicit(value: Any) -> Any:
    return None if value == AUTO else value


def vllm_request(config: VllmExtConfig, **overrides: Any) -> PlanRequest:
    """The config's sizes as planner constraints (``auto`` -> None: the planner chooses)."""
    values = dict(
        backend="vllm",
        tensor_parallel_size=_explicit(config.tensor_parallel_size),
        data_parallel_size=_explicit(config.data_parallel_size),
        pipeline_parallel_size=_explicit(config.pipeline_parallel_size),
        max_model_len=_explicit(config.requested_max_model_len),
        gpu_memory_utilization=_explicit(config.gpu_memory_utilization),
    )
    values.update(overrides)
    return PlanRequest(**values)


def executor_backend(config: VllmExtConfig, chosen: Plan, hardware: Hardware) -> str | None:
    """Ray when the ranks of one replica span nodes (vLLM's only multi-node executor), else the
    user's choice or vLLM's default. Example: 2 nodes x 8 GPUs, tensor 8 x pipeline 2 -> ``ray``."""
    requested = config.distributed_executor_backend
    spans_nodes = hardware.gpus and chosen.tensor_parallel_size * chosen.pipeline_parallel_size > hardware.num_gpus_per_node
    if requested != AUTO:
        if spans_nodes and requested != "ray":
            raise ConfigError(f"distributed_executor_backend={requested} cannot run one replica over "
                              f"{chosen.pipeline_parallel_size} nodes; use distributed_executor_backend=ray (or auto)")
        return requested
    return "ray" if spans_nodes else None


def engine_args(config: VllmExtConfig, sizes: VllmSizes) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` (one replica) from the parsed config and chosen sizes."""
    kwargs: dict[str, Any] = {
        "model": config.pretrained,
        "revision": config.revision,
        "dtype": config.dtype,
        "tokenizer": config.tokenizer,
        "tokenizer_mode": config.tokenizer_mode,
        "tokenizer_revision": config.tokenizer_revision,
        "trust_remote_code": config.trust_remote_code,
        "tensor_parallel_size": sizes.tensor_parallel_size,
        "pipeline_parallel_size": sizes.pipeline_parallel_size,
        "max_model_len": sizes.max_model_len,
        "gpu_memory_utilization": sizes.gpu_memory_utilization,
        "quantization": config.quantization,
        "seed": config.seed,
        "enforce_eager": config.enforce_eager,
        "enable_prefix_caching": config.enable_prefix_caching,
    }
    if sizes.distributed_executor_backend is not None:
        kwargs["distributed_executor_backend"] = sizes.distributed_executor_backend
    if config.max_batch_size is not None:
        kwargs["max_num_seqs"] = config.max_batch_size
    if sizes.block_size is not None:
        kwargs["block_size"] = sizes.block_size
    return kwargs


#: KV block on CPU while scoring through the prefix cache. vLLM caches whole blocks only, so each
#: choice recomputes the context tokens past its last whole block (64 on average at the CPU default
#: of 128) and contexts shorter than one block (ARC-Easy 0-shot, ~40 tokens) reuse nothing; 32 is
#: the smallest block the CPU attention kernel runs at full speed ("prefers multiples of 32").
CPU_SCORING_BLOCK_TOKENS = 32


def kv_block_size(config: VllmExtConfig, hardware: Hardware) -> int | None:
    """``block_size``: explicit, else :data:`CPU_SCORING_BLOCK_TOKENS` on CPU when loglikelihoods
    read the prefix cache, else vLLM's own (None; 16 on GPUs already)."""
    if config.block_size != AUTO:
        return int(config.block_size)
    if hardware.num_gpus == 0 and config.scores_with_prefix_cache:
        return CPU_SCORING_BLOCK_TOKENS
    return None


def replica_pinning(index: int, tensor_parallel_size: int, num_gpus: int, cpu_cores: Sequence[int],
                    num_replicas: int, visible_gpus: Sequence[str] | None = None) -> dict[str, str]:
    """Environment that pins replica ``index`` to its devices.

    GPUs: ``tensor_parallel_size`` consecutive visible GPUs each. CPU: an equal slice of
    ``cpu_cores`` per replica, cut into ``tensor_parallel_size`` groups joined by ``|`` (vLLM's
    per-rank OpenMP binding). Example: cores 0-3, 2 replicas, TP 2 -> replica 1 gets "2|3".
    """
    if num_gpus:
        gpus = list(visible_gpus) if visible_gpus is not None else [str(i) for i in range(num_gpus)]
        mine = gpus[index * tensor_parallel_size:(index + 1) * tensor_parallel_size]
        return {"CUDA_VISIBLE_DEVICES": ",".join(mine)}
    per_replica = len(cpu_cores) // num_replicas
    mine = list(cpu_cores)[index * per_replica:(index + 1) * per_replica]
    per_rank = max(len(mine) // tensor_parallel_size, 1)
    ranks = [mine[r * per_rank:(r + 1) * per_rank] for r in range(tensor_parallel_size)]
    return {"VLLM_CPU_OMP_THREADS_BIND": "|".join(",".join(map(str, cores)) for cores in ranks)}


def _replicas(sizes: VllmSizes, hardware: Hardware, args: dict[str, Any],
              cpu_cores: Sequence[int]) -> tuple[ReplicaBuild, ...]:
    ranks = sizes.tensor_parallel_size * sizes.pipeline_parallel_size
    dp = sizes.data_parallel_size
    if not hardware.gpus:
        # one engine alone keeps vLLM's own binding; several ranks or replicas split the cores
        envs = [{} if dp * ranks == 1 else replica_pinning(i, ranks, 0, cpu_cores, dp) for i in range(dp)]
        return tuple(ReplicaBuild(i, 0, envs[i], args) for i in range(dp))
    if ranks > hardware.num_gpus_per_node:
        return tuple(ReplicaBuild(i, None, {}, args) for i in range(dp))
    per_node = hardware.num_gpus_per_node // ranks
    visible = hardware.launch.cuda_visible_devices
    visible_gpus = visible.split(",") if visible else None
    return tuple(ReplicaBuild(i, i // per_node, replica_pinning(i % per_node, ranks, hardware.num_gpus_per_node,
                                                                (), per_node, visible_gpus), args)
                 for i in range(dp))


def describe_vllm_build(facts: ModelFacts, hardware: Hardware, config: VllmExtConfig, *,
                        request: PlanRequest | None = None, cpu_cores: Sequence[int] | None = None) -> VllmBuild:
    """Plan, then the engine arguments and pinning of every replica.

    ``request`` defaults to :func:`vllm_request` of ``config`` (``lm-eval-ext plan`` passes its own,
    which adds the CLI's strategy and activation tokens); ``cpu_cores`` defaults to
    ``range(hardware.num_cpu_cores)`` (the adapter passes the process's affinity).
    """
    chosen = run_planner(facts, hardware, request or vllm_request(config))
    utilization = chosen.gpu_memory_utilization
    if utilization is None:  # CPU: vLLM's default, unused there (VLLM_CPU_KVCACHE_SPACE sizes the cache)
        utilization = config.gpu_memory_utilization if config.gpu_memory_utilization != AUTO else DEFAULT_GPU_MEMORY_UTILIZATION
    sizes = VllmSizes(
        tensor_parallel_size=chosen.tensor_parallel_size, data_parallel_size=chosen.data_parallel_size,
        max_model_len=chosen.max_model_len, gpu_memory_utilization=utilization, reasons=chosen.reasons,
        pipeline_parallel_size=chosen.pipeline_parallel_size,
        distributed_executor_backend=executor_backend(config, chosen, hardware),
        block_size=kv_block_size(config, hardware),
    )
    cores = list(cpu_cores) if cpu_cores is not None else list(range(hardware.num_cpu_cores))
    return VllmBuild(chosen, sizes, _replicas(sizes, hardware, engine_args(config, sizes), cores))


def vllm_build_json(facts: ModelFacts, hardware: Hardware, model_args: dict[str, str],
                    request: PlanRequest) -> dict[str, Any]:
    """``lm-eval-ext plan``'s ``"build"``: the keys vllm_ext reads, parsed as vllm_ext parses them."""
    known = {f.name for f in fields(VllmExtConfig)}
    config = VllmExtConfig.from_model_args({k: v for k, v in model_args.items() if k in known})
    return describe_vllm_build(facts, hardware, config, request=replace(request, backend="vllm")).to_json()
