"""PURE: the ``hf_ext`` build description: what one process hands to transformers, accelerate and
torch.distributed, as plain data.

:func:`hf_build` turns (plan, hardware, the process's place in the launch, HFLM's keyword arguments)
into an :class:`HfBuild`. ``hf_ext`` builds from it (:mod:`lm_eval_ext.plan.layout` makes it, the
adapter hands its ``hflm_kwargs`` to HFLM and its :meth:`HfBuild.placement_kwargs` to
``from_pretrained``), a dry run writes it (:mod:`lm_eval_ext.dry_run`), and ``lm-eval-ext plan
--json`` prints one per process of the launch (:func:`hf_builds`): what is planned and what is
built are one value.

Worked example: hybrid on 8 x 80 GiB with 2 processes. Process 1 (``RANK=LOCAL_RANK=1``) takes the
slice ``4 x 1 .. 4 x 1 + 3`` = GPUs 4-7: ``device_map="auto"``, ``max_memory={4: u, 5: u, 6: u, 7: u}``
(``u`` the planned cap per GPU, nothing for the other slice), inputs on ``cuda:4``; accelerate opens an
nccl group in which it is rank 1 of 2, and it evaluates document shard 1 of 2. Under
``CUDA_VISIBLE_DEVICES=8,9,...`` the ordinals stay 0-based (what torch sees); ``physical`` maps them
back to the listed ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.hardware import Hardware, LaunchEnv
from lm_eval_ext.plan.preflight import omp_num_threads_default
from lm_eval_ext.plan.types import Plan, Strategy

#: strategies that hand accelerate a device_map over a slice instead of one device
SPLIT_STRATEGIES = (Strategy.MODEL_SPLIT, Strategy.HYBRID, Strategy.CPU_OFFLOAD)
#: who creates the process group: HFLM.__init__ builds an ``accelerate.Accelerator`` for every
#: model given by name; under a launch of several processes that initialises torch.distributed
PROCESS_GROUP_CREATOR = "accelerate.Accelerator in HFLM.__init__ (env:// from the launcher's variables)"


@dataclass(frozen=True)
class Place:
    """Where one process sits in the launch (torchrun / accelerate give contiguous ranks per node)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def node_rank(self) -> int:
        return self.rank // max(1, self.local_world_size)

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def place_of(launch: LaunchEnv) -> Place:
    """This process's place, from the launcher's variables (absent: one process)."""
    local_rank = launch.local_rank or 0
    rank = launch.rank if launch.rank is not None else local_rank
    return Place(rank=rank, local_rank=local_rank, world_size=launch.num_processes,
                 local_world_size=launch.num_local_processes)


def launch_places(num_processes: int, num_nodes: int) -> tuple[Place, ...]:
    """Every process of a launch of ``num_processes`` spread evenly over ``num_nodes``."""
    per_node = max(1, num_processes // max(1, num_nodes))
    return tuple(Place(rank, rank % per_node, num_processes, per_node) for rank in range(num_processes))


#: what lm-eval's CLI passes as ``device`` when the user gives no ``--device`` (EvaluatorConfig)
LM_EVAL_CLI_DEFAULT_DEVICE = "cuda:0"


def unpinned_device(requested: str, launch: LaunchEnv) -> str:
    """A ``cuda:N`` that cannot mean "only GPU N" becomes ``cuda`` (plan over every visible GPU):
    lm-eval's CLI default ``cuda:0`` (else every CLI run on several GPUs would plan for one), and
    any ``cuda:N`` under a launch of several processes, where each process takes its own GPUs
    (stock ``hf`` overrides the device there too)."""
    if requested.startswith("cuda:") and (requested == LM_EVAL_CLI_DEFAULT_DEVICE or launch.num_processes > 1):
        return "cuda"
    return requested


def resolve_device(requested: str, hardware: Hardware) -> str:
    """``auto`` -> cuda when a GPU is visible, else cpu. lm-eval's default ``cuda``/``cuda:0`` without
    a visible GPU becomes cpu (the caller warns), as stock ``hf`` does: refusing it would break every
    CPU run that did not spell ``--device cpu``. Any other CUDA device (``cuda:3``) was named by the
    user: without a GPU it is an error, not a silent CPU run."""
    if requested == "auto":
        return "cuda" if hardware.gpus else "cpu"
    if requested.startswith("cuda") and not hardware.gpus:
        if requested not in ("cuda", "cuda:0"):  # not lm-eval's default: the user named this device
            raise UserError(f"device={requested}: no CUDA device is visible (torch.cuda.is_available() is False); "
                            "pass --device cpu, or drop --device to run on CPU")
        return "cpu"
    return requested


def resolve_dtype(requested: str, device: str, hardware: Hardware) -> str:
    """``auto``: float32 on CPU (bf16 matmuls there are slow and less exact), bfloat16 when every
    visible GPU supports it, else the checkpoint's own dtype."""
    if requested != "auto":
        return requested
    if device.startswith("cpu"):
        return "float32"
    if hardware.gpus and all(g.supports_bf16 for g in hardware.gpus):
        return "bfloat16"
    return "auto"


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
    place: Place
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
        if self.place.world_size <= 1:
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
            "process": {"rank": self.place.rank, "local_rank": self.place.local_rank,
                        "world_size": self.place.world_size, "local_world_size": self.place.local_world_size,
                        "node_rank": self.place.node_rank, "num_nodes": self.place.num_nodes},
            "gpus": {"cuda_visible_devices": self.cuda_visible_devices, "local_ordinals": list(ordinals),
                     "physical": [self.visible_devices[i] for i in ordinals if i < len(self.visible_devices)],
                     "input_device": self.placement.device},
            "process_group": {"backend": self.process_group_backend, "rank": self.place.rank,
                              "world_size": self.place.world_size,
                              "created_by": PROCESS_GROUP_CREATOR if self.process_group_backend else None},
            "data_shard": {"rank": self.place.rank, "world_size": self.place.world_size},
            "environment": dict(self.environment),
            "plan": self.plan.to_json(),
            "warnings": list(self.plan.warnings),
        }


def _environment(plan: Plan, hardware: Hardware, place: Place) -> dict[str, str]:
    env: dict[str, str] = {}
    if hardware.launch.omp_num_threads in (None, ""):
        env["OMP_NUM_THREADS"] = str(omp_num_threads_default(hardware.num_cpu_cores, place.local_world_size))
    if place.world_size > 1 and plan.device == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def hf_build(plan: Plan, hardware: Hardware, place: Place, *, hflm_kwargs: Mapping[str, Any],
             offload_folder: str) -> HfBuild:
    """The build description of the process at ``place``; ``hflm_kwargs`` as the config gives them
    (device and dtype resolved), before the placement sets ``device`` and ``parallelize``."""
    placed = placement(plan, device=str(hflm_kwargs.get("device", "cuda")), local_rank=place.local_rank,
                       offload_folder=offload_folder)
    kwargs = {**hflm_kwargs, "device": placed.device, "parallelize": placed.parallelize}
    return HfBuild(plan=plan, place=place, placement=placed, hflm_kwargs=kwargs,
                   visible_devices=visible_device_ids(hardware),
                   cuda_visible_devices=hardware.launch.cuda_visible_devices,
                   environment=_environment(plan, hardware, place))


def hf_builds(plan: Plan, hardware: Hardware, *, hflm_kwargs: Mapping[str, Any],
              offload_folder: str) -> list[HfBuild]:
    """One build description per process of the planned launch (``lm-eval-ext plan --json``)."""
    places = launch_places(plan.num_processes, hardware.num_nodes)
    return [hf_build(plan, hardware, place, hflm_kwargs=hflm_kwargs, offload_folder=offload_folder)
            for place in places]
