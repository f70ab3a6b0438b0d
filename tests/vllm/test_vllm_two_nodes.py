"""Data parallel across nodes for ``vllm_ext``, for real: two ``torchrun`` "nodes" on 127.0.0.1
(``--nnodes 2 --node-rank 0|1 --nproc-per-node 1``), each one ``lm_eval`` process with its own vLLM
CPU engine pinned to its own core. lm-eval shards the documents by global rank and gathers them on
rank 0 through vllm_ext's gloo collectives (``vllm/shards.py``). Checked: each node scored half of
the documents, the samples rank 0 wrote cover every document once, and they equal stock ``vllm``
in one process (run in this session, ``stock_samples``) within 1e-4, generations identical.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.dist.test_cpu_data_parallel import _parse
from tests.dist.test_two_nodes import _run_nodes
from tests.helpers import free_port
from tests.vllm.evaluation import SUITE_LIMIT, SUITE_TASKS, differences
from tests.vllm.support import ROOT, requires_vllm

pytestmark = [pytest.mark.vllm, requires_vllm, pytest.mark.slow]


def _node_command(model: str, out: Path, node_rank: int, port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node_rank),
            "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
            "-m", "lm_eval", "--model", "vllm_ext",
            "--model_args", f"pretrained={model},dtype=float32,enforce_eager=True,seed=1234,cache=off",
            "--tasks", ",".join(SUITE_TASKS), "--include_path", str(ROOT / "tasks"), "--limit", str(SUITE_LIMIT),
            "--output_path", str(out), "--log_samples"]


def _logged_samples(out: Path) -> dict[str, dict[int, object]]:
    found: dict[str, dict[int, object]] = {}
    for path in out.rglob("samples_*.jsonl"):
        task = re.match(r"samples_(.+)_\d{4}-", path.name).group(1)
        for line in path.read_text().splitlines():
            row = json.loads(line)
            assert row["doc_id"] not in found.setdefault(task, {}), (task, row["doc_id"], "twice")
            found[task][row["doc_id"]] = _parse(row["resps"])
    return found


def test_two_nodes_shard_documents_and_equal_stock(tiny_vllm_model_path, stock_samples, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LM_EVAL_EXT_DRY_RUN")}
    env |= {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "LM_EVAL_EXT_RENDEZVOUS_TIMEOUT_S": "300"}
    cores = sorted(os.sched_getaffinity(0))
    commands = [_node_command(tiny_vllm_model_path, tmp_path / f"node{rank}", rank, port) for rank in (0, 1)]
    envs = [{**env, "VLLM_CPU_OMP_THREADS_BIND": str(cores[rank % len(cores)])} for rank in (0, 1)]
    joined = _run_nodes(commands, envs, tmp_path, timeout_s=900)
    # lm-eval builds each task's requests for its rank only (half of the documents per node)
    built = set(re.findall(r"Building contexts for (\w+) on rank (\d)", joined))
    assert built == {(task, rank) for task in SUITE_TASKS for rank in ("0", "1")}, joined[-3000:]
    assert not list((tmp_path / "node1").rglob("samples_*.jsonl")), "rank 1 wrote samples: not gathered to rank 0"
    got = _logged_samples(tmp_path / "node0")
    assert {t: len(d) for t, d in got.items()} == {t: len(d) for t, d in stock_samples.items()}, built
    assert differences(stock_samples, got) == []
