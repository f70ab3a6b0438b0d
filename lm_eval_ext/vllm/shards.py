"""EDGE (torch.distributed): data parallel across nodes for ``vllm_ext``, one ``lm_eval`` process per node.

Chosen over vLLM's native data parallel (one front end with a head address, every request through
it): each node runs its own persistent replicas on its own GPUs and scores the documents of its
global rank, so no request crosses the network and a node failing loses its shard only. Launch,
2 nodes x 8 GPUs (each node plans its own 8 GPUs; ``data_parallel_size`` counts this node's replicas):

    torchrun --nnodes 2 --node-rank {0|1} --nproc-per-node 1 --master-addr NODE0 --master-port 29500 \\
        -m lm_eval --model vllm_ext --model_args pretrained=M --tasks T --output_path out

lm-eval's evaluator does the sharding and the gathering: it builds each task's requests for
``rank``/``world_size`` only and gathers samples and metrics to rank 0 through the model's
``all_gather``, ``gather_object`` and ``barrier`` (stock ``vllm`` leaves those as single-process
no-ops, so two stock nodes would each evaluate everything). Here they run over a gloo group joined
with the project's bounded rendezvous: a few CPU tensors and objects per evaluation, the GPUs stay
vLLM's.
"""

from __future__ import annotations

import logging
from typing import Any

from lm_eval_ext.plan.launch import Launch
from lm_eval_ext.rendezvous import join_process_group

logger = logging.getLogger(__name__)


class NodeShards:
    """This process's place among the ``lm_eval`` processes of the run, and their collectives."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    @classmethod
    def join(cls, launch: Launch) -> NodeShards | None:
        """None for one process; else joins (or finds) the process group."""
        if not launch.is_distributed:
            return None
        import torch.distributed as dist

        join_process_group(launch, any_launcher=True, backend="gloo")
        shards = cls(dist.get_rank(), dist.get_world_size())
        logger.info("vllm_ext: rank %d/%d: documents sharded by global rank, one lm_eval process per node",
                    shards.rank, shards.world_size)
        return shards

    def all_gather(self, tensor: Any) -> Any:
        import torch
        import torch.distributed as dist

        local = tensor.detach().cpu()
        if local.ndim == 0:  # lm-eval gathers 0-d counts; accelerate's gather makes them 1-d too
            local = local[None]
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list | None:
        import torch.distributed as dist

        out = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()
