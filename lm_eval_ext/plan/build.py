"""PURE: the ``hf_ext`` build description: what one process hands to transformers, accelerate and
torch.distributed, as plain data.

:func:`hf_build` turns (plan, hardware, the process's place in the launch, HFLM's keyword arguments)
into an :class:`HfBuild`, and :func:`layout_from_plan` wraps it in the :class:`Layout` the adapter
holds. ``hf_ext`` builds from it (:mod:`lm_eval_ext.plan.layout` makes it, the adapter hands its
``hflm_kwargs`` to HFLM and its :meth:`HfBuild.placement_kwargs` to ``from_pretrained``), a dry run
writes it (:mod:`lm_eval_ext.plan.dry_run`), and ``lm-eval-ext plan --json`` prints one per process
of the launch (:func:`hf_builds`): what is planned and what is built are one value.

Worked example: hybrid on 8 x 80 GiB with 2 processes. Process 1 (``RANK=LOCAL_RANK=1``) takes the
slice ``4 x 1 .. 4 x 1 + 3`` = GPUs 4-7: ``device_map="auto"``, ``max_memory={4: u, 5: u, 6: u, 7: u}``
(``u`` the planned cap per GPU, nothing for the other slice), inputs on ``cuda:4``; accelerate opens an
nccl group in which it is rank 1 of 2, and it evaluates document shard 1 of 2. Under
``CUDA_VISIBLE_DEVICES=8,9,...`` the ordinals stay 0-based (what torch sees); ``physical`` maps them
back to the listed ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lm_eval_ext.plan.hardware import Hardware
from lm_eval_ext.plan.launch import Launch, launch_places
from lm_eval_ext.plan.preflight import omp_num_threads_default
from lm_eval_ext.plan.types import Plan, Strategy

#: strategies that hand accelerate a device_map over a slice instead of one device
SPLIT_STRATEGIES = (Strategy.MODEL_SPLIT, Strategy.HYBRID, Strategy.CPU_OFFLOAD)
#: who creates the process group: HFLM.__init__ builds an ``accelerate.Accelerator`` for every
#: model given by name; under a launch of several processes that initialises torch.distributed
PROCESS_GROUP_CREATOR = "accelerate.Accelerator in HFLM.__init__ (env:// from the launcher's variables)"


@dataclass(frozen=True)
class Placement:
    """Where the weights go and where inputs are put, for one process."""

    device: str
    """HFLM's ``device``: inputs go there (accelerate hooks move them along a split)."""
    parallelize: bool
    """True when accelerate places the model from a ``device_map`` over a slice (HFLM's switch)."""
    device_map: str | dict[str, str]
    max_memory: dict[int | str, int] | None
    offload_folder: str | None
    gpu_ordinals: tuple[int, ...]
    """CUDA ordinals (as torch numbers the visible devices) this process puts weights on."""


def placement(plan: Plan, *, device: str, local_rank: int, offload_folder: str) -> Placement:
    """Pure mapping plan -> placement. Each process of a hybrid run takes its own contiguous slice;
    data parallel puts process ``i`` of a node on ``cuda:i`` (what accelerate's device is)."""
    if plan.strategy in SPLIT_STRATEGIES:
        first = local_rank * plan.gpus_per_replica if plan.strategy == Strategy.HYBRID else 0
        ordinals = tuple(range(first, first + len(plan.max_memory_per_gpu_bytes)))
        max_memory: dict[int | str, int] = {i: int(b) for i, b in zip(ordinals, plan.max_memory_per_gpu_bytes)}
        if plan.max_cpu_memory_bytes:
            max_memory["cpu"] = int(plan.max_cpu_memory_bytes)
        inputs = "cpu" if plan.device == "cpu" else f"cuda:{first}"
        return Placement(inputs, True, "auto", max_memory, offload_folder, ordinals)
    if plan.device == "cpu":
        return Placement("cpu", False, {"": "cpu"}, None, None, ())
    if plan.num_processes > 1:  # HFLM keeps device "cuda" and takes accelerate's cuda:LOCAL_RANK
        return Placement("cuda", False, {"": f"cuda:{local_rank}"}, None, None, (local_rank,))
    on = device if device.startswith("cuda") else "cuda"
    return Placement(on, False, {"": on}, None, None, (int(on.split(":", 1)[1]) if ":" in on else 0,))


def visible_device_ids(hardware: Hardware) -> tuple[str, ...]:
    """The physical id of each visible GPU, in ordinal order (``CUDA_VISIBLE_DEVICES`` remaps)."""
    listed = hardware.launch.cuda_visible_devices
    if listed is not None:
        return tuple(part.strip() for part in listed.split(",") if part.strip())
    return tuple(str(i) for i in range(len(hardware.gpus)))


@dataclass(frozen=True)
class HfBuild:
    plan: Plan
    launch: Launch
    """The process this description is for (its ranks, its node)."""
    placement: Placement
    hflm_kwargs: Mapping[str, Any]
    """Every keyword argument handed to lm-eval's HFLM (device and parallelize from the placement)."""
    visible_devices: tuple[str, ...]
    cuda_visible_devices: str | None
    environment: Mapping[str, str]
    """Variables ``hf_ext`` sets in this process before HFLM starts (only those it sets)."""

    @property
    def process_group_backend(self) -> str | None:
        """What accelerate initialises: nccl on GPUs, gloo on CPU (hf_ext exports
        ``ACCELERATE_USE_CPU=true`` there); no group for a single process."""
        if self.launch.world_size <= 1:
            return None
        return "nccl" if self.plan.device == "cuda" else "gloo"

    def placement_kwargs(self) -> dict[str, Any]:
        """What HFLM's ``_get_accelerate_args`` hands on to ``from_pretrained``."""
        kwargs: dict[str, Any] = {"device_map": self.placement.device_map, "max_memory": self.placement.max_memory}
        if self.placement.parallelize:
            kwargs["offload_folder"] = self.placement.offload_folder
        return kwargs

    def to_json(self) -> dict[str, Any]:
        kw = self.hflm_kwargs
        placed = self.placement_kwargs()
        if placed["max_memory"] is not None:
            placed["max_memory"] = {str(k): v for k, v in placed["max_memory"].items()}
        ordinals = self.placement.gpu_ordinals
        return {
            "backend": "hf",
            "strategy": self.plan.strategy.value,
            "from_pretrained": {"pretrained": kw.get("pretrained"), "revision": kw.get("revision"),
                                "subfolder": kw.get("subfolder"), "dtype": kw.get("dtype"),
                                "trust_remote_code": kw.get("trust_remote_code"), **placed},
            "hflm": dict(kw),
            "process": {"rank": self.launch.rank, "local_rank": self.launch.local_rank,
                        "world_size": self.launch.world_size, "local_world_size": self.launch.local_world_size,
                        "node_rank": self.launch.node_rank, "num_nodes": self.launch.num_nodes},
            "gpus": {"cuda_visible_devices": self.cuda_visible_devices, "local_ordinals": list(ordinals),
                     "physical": [self.visible_devices[i] for i in ordinals if i < len(self.visible_devices)],
                     "input_device": self.placement.device},
            "process_group": {"backend": self.process_group_backend, "rank": self.launch.rank,
                              "world_size": self.launch.world_size,
                              "created_by": PROCESS_GROUP_CREATOR if self.process_group_backend else None},
            "data_shard": {"rank": self.launch.rank, "world_size": self.launch.world_size},
            "environment": dict(self.environment),
            "plan": self.plan.to_json(),
            "warnings": list(self.plan.warnings),
        }


def _environment(plan: Plan, hardware: Hardware, launch: Launch) -> dict[str, str]:
    env: dict[str, str] = {}
    if hardware.launch.omp_num_threads in (None, ""):
        env["OMP_NUM_THREADS"] = str(omp_num_threads_default(hardware.num_cpu_cores, launch.local_world_size))
    if launch.world_size > 1 and plan.device == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def hf_build(plan: Plan, hardware: Hardware, launch: Launch, *, hflm_kwargs: Mapping[str, Any],
             offload_folder: str) -> HfBuild:
    """The build description of the process ``launch`` describes; ``hflm_kwargs`` as the config gives
    them (device and dtype resolved), before the placement sets ``device`` and ``parallelize``."""
    placed = placement(plan, device=str(hflm_kwargs.get("device", "cuda")), local_rank=launch.local_rank,
                       offload_folder=offload_folder)
    kwargs = {**hflm_kwargs, "device": placed.device, "parallelize": placed.parallelize}
    return HfBuild(plan=plan, launch=launch, placement=placed, hflm_kwargs=kwargs,
                   visible_devices=visible_device_ids(hardware),
                   cuda_visible_devices=hardware.launch.cuda_visible_devices,
                   environment=_environment(plan, hardware, launch))


def hf_builds(plan: Plan, hardware: Hardware, *, hflm_kwargs: Mapping[str, Any],
              offload_folder: str) -> list[HfBuild]:
    """One build description per process of the planned launch (``lm-eval-ext plan --json``)."""
    return [hf_build(plan, hardware, launch, hflm_kwargs=hflm_kwargs, offload_folder=offload_folder)
            for launch in launch_places(plan.num_processes, hardware.num_nodes)]


@dataclass(frozen=True)
class Layout:
    """What ``hf_ext`` builds this process from: the plan, its build description, and its launch."""

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
    launch: Launch | None = None
    """This process's launch on a real (not described) machine: the adapter joins its process group."""
    preflight_warnings: tuple[str, ...] = ()
    """What the launch checks warned about; logged with the plan."""

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

    def to_json(self) -> dict[str, Any]:
        """What a dry run writes: the build description, or stock placement's HFLM arguments."""
        if self.build is not None:
            return self.build.to_json()
        return {"backend": "hf", "plan": None, "hflm": dict(self.hflm_kwargs)}

    def plan_warnings(self) -> list[str]:
        return list(self.preflight_warnings)

    def plan_details(self) -> list[str]:
        return [f"device_map=auto with max_memory={self.accelerate_args['max_memory']}"] if self.accelerate_args else []


def layout_from_plan(plan: Plan, *, device: str, hardware: Hardware, offload_folder: str,
                     hflm_kwargs: Mapping[str, Any] | None = None, launch: Launch | None = None) -> Layout:
    """Plan -> Layout around the build description of this process (``launch``: the hardware's)."""
    build = hf_build(plan, hardware, launch or hardware.launch, offload_folder=offload_folder,
                     hflm_kwargs={"device": device, **(hflm_kwargs or {})})
    split = build.placement.parallelize
    return Layout(plan, build.placement.device, build.placement_kwargs() if split else None, build,
                  dict(build.hflm_kwargs))
