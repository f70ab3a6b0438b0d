"""Two nodes for real: two launchers on 127.0.0.1, each a "node" with one process (LOCAL_RANK=0).

Why (measured here, 2026-12-01, by hand, the same two ``torchrun --nnodes 2 --node_rank 0|1
--nproc-per-node 1 --master_addr 127.0.0.1`` launchers with ACCELERATE_USE_CPU=true OMP_NUM_THREADS=1,
stock ``--model hf`` on ext_arith_mc --limit 8): both nodes logged "Building contexts for ext_arith_mc
on rank 0", both ran all 32 loglikelihood requests over all 8 documents, and both wrote a results
file and 8 samples: the whole evaluation twice, nothing sharded (46 s wall for the pair). Stock HFLM
shards only when it sees more than one GPU, and then by ``accelerator.local_process_index``, which
is 0 on both nodes, so on GPUs too the two nodes repeat each other.

``hf_ext`` takes the global rank: these tests check from the logs that rank 0 and rank 1 each handled
4 of the 8 documents, that the samples rank 0 gathered cover all 8 once (so the halves were
disjoint), and that those per-sample results equal one process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.dist.test_cpu_data_parallel import _assert_close, _samples
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TASK, LIMIT = "ext_arith_mc", 8


def _lm_eval(model: Path, out: Path) -> list[str]:
    return ["-m", "lm_eval", "--model", "hf_ext", "--model_args", f"pretrained={model},dtype=float32",
            "--tasks", TASK, "--include_path", str(ROOT / "tasks"), "--batch_size", "4", "--limit", str(LIMIT),
            "--output_path", str(out), "--log_samples"]


def _env(base: dict) -> dict:
    env = {**base, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "LM_EVAL_EXT_DRY_RUN"):
        env.pop(name, None)
    return env


def _run_nodes(commands: list[list[str]], env: dict | list[dict], cwd: Path, timeout_s: float = 600) -> str:
    """Start every node in the background (``env``: one for all, or one per node), wait for all;
    their logs joined."""
    envs = env if isinstance(env, list) else [env] * len(commands)
    nodes = [subprocess.Popen(cmd, env=node_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd, node_env in zip(commands, envs, strict=True)]
    logs = []
    try:
        for node in nodes:
            logs.append(node.communicate(timeout=timeout_s)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    for node, log in zip(nodes, logs):
        assert node.returncode == 0, log[-3000:]
    return "\n".join(logs)


def _check_halves_and_samples(logs: str, out: Path, one_process: dict) -> None:
    shards = dict((int(rank), int(docs)) for rank, docs in
                  re.findall(r"rank (\d)/2: loglikelihood: \d+ requests over (\d+) documents", logs))
    assert shards == {0: LIMIT // 2, 1: LIMIT // 2}, logs[-3000:]
    assert "data parallel over 2 processes" in logs
    merged = _samples(out)
    assert len(list(out.rglob("results_*.json"))) == 1, "only global rank 0 writes results"
    assert merged.keys() == one_process.keys() and len(merged) == LIMIT  # the halves were disjoint
    for key, want in one_process.items():
        _assert_close(want, merged[key], key)


def test_two_torchrun_nodes_split_the_documents_by_global_rank(tiny_model_path, one_process, tmp_path, scratch_env):
    out, port = tmp_path / "out", str(free_port())
    commands = [[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
                 "--nproc-per-node", "1", "--master_addr", "127.0.0.1", "--master_port", port,
                 *_lm_eval(tiny_model_path, out)] for node in (0, 1)]
    logs = _run_nodes(commands, _env(scratch_env), tmp_path)
    _check_halves_and_samples(logs, out, one_process)


def test_two_accelerate_nodes_from_a_multinode_config(tiny_model_path, one_process, tmp_path, scratch_env):
    """``accelerate_configs/multinode_2x8.yaml`` with CPU overrides: one process per node on
    loopback. MULTI_GPU stays (it is what launches through torch elastic on both nodes); hf_ext sees
    no CUDA and accelerate uses gloo (ACCELERATE_USE_CPU)."""
    config = yaml.safe_load((ROOT / "accelerate_configs" / "multinode_2x8.yaml").read_text())
    config.update(num_processes=2, main_process_ip="127.0.0.1", main_process_port=free_port())
    out = tmp_path / "out"
    commands = []
    for node in (0, 1):
        path = tmp_path / f"node{node}.yaml"
        path.write_text(yaml.safe_dump({**config, "machine_rank": node}))
        commands.append([str(BIN / "accelerate"), "launch", "--config_file", str(path), *_lm_eval(tiny_model_path, out)])
    logs = _run_nodes(commands, _env(scratch_env), tmp_path)
    _check_halves_and_samples(logs, out, one_process)
