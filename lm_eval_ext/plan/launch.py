"""PURE: this process's place in its launch, the one type for "which rank am I".

:class:`Launch` holds what the launcher exported, resolved: the global rank (which documents this
process evaluates), the local rank (which GPUs it takes), world and local world sizes, node rank,
number of nodes, the launcher, the rendezvous address, ``CUDA_VISIBLE_DEVICES`` and
``OMP_NUM_THREADS``. It is read from the environment in one place only
(:func:`lm_eval_ext.plan.launch_env.read_launch_env`); described launches (``lm-eval-ext plan``,
dry runs) build it from numbers with :meth:`Launch.resolve` or :func:`launch_places`.

Worked example: two nodes of eight processes under torchrun. Node 1's fourth process sees
``RANK=11 LOCAL_RANK=3 WORLD_SIZE=16 LOCAL_WORLD_SIZE=8``: global rank 11 (document shard 11 of 16),
local rank 3 (its GPUs), node rank 11 // 8 = 1 of 16 // 8 = 2 nodes. With only ``LOCAL_RANK=1
WORLD_SIZE=2`` exported, the global rank is the local one (1) and the local world the whole world.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the launcher's rank variables, by field name; :attr:`Launch.given` says which were exported
RANK_FIELDS = ("rank", "local_rank", "world_size", "local_world_size")


@dataclass(frozen=True)
class Launch:
    rank: int = 0
    """Global rank: decides the document shard (``RANK``; ``LOCAL_RANK`` when ``RANK`` is absent)."""
    local_rank: int = 0
    """Rank on this node: decides the GPUs taken (``LOCAL_RANK``; 0 when absent)."""
    world_size: int = 1
    """Processes of the launch, all nodes (``WORLD_SIZE``; 1 when absent)."""
    local_world_size: int = 1
    """Processes on this node (``LOCAL_WORLD_SIZE``; the whole world when absent)."""
    num_nodes: int = 1
    """Nodes the launch spans: ``world_size // local_world_size``, or the scheduler's count."""
    launcher: str = "python"
    """accelerate, torchrun, slurm, python (none), or described (a planned launch)."""
    master_addr: str | None = None
    master_port: str | None = None
    cuda_visible_devices: str | None = None
    omp_num_threads: str | None = None
    """As exported (preflight refuses a value that is not a positive integer); None when unset."""
    given: frozenset[str] = frozenset()
    """The :data:`RANK_FIELDS` the launcher exported; preflight names a missing one."""

    @classmethod
    def resolve(cls, *, rank: int | None = None, local_rank: int | None = None, world_size: int | None = None,
                local_world_size: int | None = None, num_nodes: int | None = None, **rest) -> Launch:
        """A launch from the variables given (``None``: absent), every rank resolved."""
        values = dict(rank=rank, local_rank=local_rank, world_size=world_size, local_world_size=local_world_size)
        local = local_rank or 0
        world = world_size or 1
        local_world = local_world_size or world
        return cls(rank=local if rank is None else rank, local_rank=local, world_size=world,
                   local_world_size=local_world, num_nodes=num_nodes or max(1, world // max(1, local_world)),
                   given=frozenset(name for name, value in values.items() if value is not None), **rest)

    @property
    def node_rank(self) -> int:
        """Launchers give each node a contiguous block of global ranks."""
        return self.rank // max(1, self.local_world_size)

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launch_places(num_processes: int, num_nodes: int) -> tuple[Launch, ...]:
    """Every process of a launch of ``num_processes`` spread evenly over ``num_nodes``."""
    per_node = max(1, num_processes // max(1, num_nodes))
    return tuple(Launch.resolve(rank=rank, local_rank=rank % per_node, world_size=num_processes,
                                local_world_size=per_node, launcher="described")
                 for rank in range(num_processes))
