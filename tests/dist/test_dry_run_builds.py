"""Every planned hf_ext layout followed down to what would be built, through the real adapter.

Each test constructs ``hf_ext`` the way lm-eval does (the registry's ``create_from_arg_string``, or
the ``lm_eval`` CLI), on a machine described by ``LM_EVAL_EXT_HARDWARE`` and the launcher's variables
as ``accelerate launch`` / ``torchrun`` set them, with ``LM_EVAL_EXT_DRY_RUN`` set: the adapter writes
its build description and exits 0 before loading weights. The assertions read that file: the
expected values are written out here from the layout's definition (process i on GPU i, slice
4i..4i+3, ...), never computed with the code under test. This machine has no CUDA: a dry run that
touched torch.cuda or initialised a process group would fail or show in the last checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_ext.errors import UserError
from lm_eval_ext.units import GiB

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "fixtures" / "configs"
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "CUDA_VISIBLE_DEVICES", "LM_EVAL_EXT_NODES",
               "ACCELERATE_MIXED_PRECISION", "TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU")


@pytest.fixture
def dry_run(monkeypatch, tmp_path):
    """``dry_run(model_args, hardware, **launch_vars) -> the written build description``."""
    for name in LAUNCH_VARS:  # set then delete: the adapter may export some; teardown removes them
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)

    def run(model_args: str, hardware: str, **launch: str) -> dict:
        from lm_eval.api.registry import get_model

        path = tmp_path / f"build-{launch.get('RANK', '0')}.json"
        monkeypatch.setenv("LM_EVAL_EXT_DRY_RUN", str(tmp_path / "build-{rank}.json"))
        monkeypatch.setenv("LM_EVAL_EXT_HARDWARE", hardware)
        for name in LAUNCH_VARS:
            monkeypatch.delenv(name, raising=False)
        for name, value in launch.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit) as stopped:
            get_model("hf_ext").create_from_arg_string(model_args, {"batch_size": 1, "max_batch_size": None,
                                                                    "device": None})
        assert stopped.value.code == 0
        return json.loads(path.read_text())

    return run


def _accelerate(rank: int, world: int, local_world: int | None = None) -> dict[str, str]:
    """The variables ``accelerate launch`` (through torch elastic) gives process ``rank``."""
    local_world = local_world or world
    return {"RANK": str(rank), "LOCAL_RANK": str(rank % local_world), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(local_world), "ACCELERATE_MIXED_PRECISION": "no", "TORCHELASTIC_RUN_ID": "x"}


def _nothing_touched_cuda_or_a_group() -> None:
    import torch

    assert not torch.cuda.is_initialized()
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())


def test_seed_case_splits_30_gb_over_two_24_gb_cards(dry_run):
    build = dry_run(f"pretrained={CONFIGS / 'qwen2.5-14b'}", "2x24GiB")
    assert build["plan"]["weights_bytes"] > 24 * GiB  # the seed case: no card holds the weights
    assert build["strategy"] == "model_split"
    placed = build["from_pretrained"]
    assert placed["device_map"] == "auto" and placed["dtype"] == "bfloat16"
    assert set(placed["max_memory"]) == {"0", "1"}  # both cards, no cpu or disk spill
    assert placed["max_memory"] == {"0": build["plan"]["max_memory_per_gpu_bytes"][0],
                                    "1": build["plan"]["max_memory_per_gpu_bytes"][1]}
    assert all(cap < 24 * GiB for cap in placed["max_memory"].values())  # headroom kept on each card
    assert sum(placed["max_memory"].values()) >= build["plan"]["weights_bytes"]
    assert build["hflm"]["parallelize"] is True and build["hflm"]["device"] == "cuda:0"
    assert build["process_group"]["backend"] is None and build["data_shard"] == {"rank": 0, "world_size": 1}
    _nothing_touched_cuda_or_a_group()


def test_7b_on_four_24_gb_cards_with_four_processes_is_data_parallel(dry_run):
    for rank in range(4):
        build = dry_run(f"pretrained={CONFIGS / 'llama-2-7b'}", "4x24GiB", **_accelerate(rank, 4))
        assert build["strategy"] == "data_parallel"
        assert build["from_pretrained"]["device_map"] == {"": f"cuda:{rank}"}
        assert build["from_pretrained"]["max_memory"] is None and "offload_folder" not in build["from_pretrained"]
        assert build["gpus"]["local_ordinals"] == [rank] and build["gpus"]["physical"] == [str(rank)]
        assert build["hflm"]["parallelize"] is False
        assert build["process_group"] == {"backend": "nccl", "rank": rank, "world_size": 4,
                                          "created_by": build["process_group"]["created_by"]}
        assert build["data_shard"] == {"rank": rank, "world_size": 4}
    _nothing_touched_cuda_or_a_group()


def test_hybrid_two_processes_of_four_gpus_on_eight_80_gb_cards(dry_run):
    for rank, slice_ in ((0, [0, 1, 2, 3]), (1, [4, 5, 6, 7])):
        build = dry_run(f"pretrained={CONFIGS / 'llama-3-70b'},strategy=hybrid", "8x80GiB", **_accelerate(rank, 2))
        assert build["strategy"] == "hybrid"
        assert build["from_pretrained"]["device_map"] == "auto"
        assert sorted(build["from_pretrained"]["max_memory"]) == [str(i) for i in slice_]  # only its own slice
        assert build["gpus"]["local_ordinals"] == slice_ and build["hflm"]["device"] == f"cuda:{slice_[0]}"
        assert build["process_group"]["backend"] == "nccl" and build["data_shard"] == {"rank": rank, "world_size": 2}


def test_70b_on_one_80_gb_card_offloads_with_the_warning_or_refuses_with_the_fix(dry_run):
    build = dry_run(f"pretrained={CONFIGS / 'llama-2-70b'}", "1x80GiB")
    assert build["strategy"] == "cpu_offload"
    assert sorted(build["from_pretrained"]["max_memory"]) == ["0", "cpu"]
    assert build["from_pretrained"]["max_memory"]["0"] < 80 * GiB
    assert any("cpu_offload is slow" in w for w in build["warnings"])
    with pytest.raises(UserError, match=r"does not fit 1 x GPU .*Smallest changes that fit: .*strategy=cpu_offload"):
        dry_run(f"pretrained={CONFIGS / 'llama-2-70b'},strategy=single", "1x80GiB")  # refused before building


def test_cuda_visible_devices_4_to_7_give_local_ordinals_0_to_3(dry_run):
    for rank in range(4):
        build = dry_run(f"pretrained={CONFIGS / 'llama-2-7b'}", "8x80GiB", CUDA_VISIBLE_DEVICES="4,5,6,7",
                        **_accelerate(rank, 4))
        assert build["strategy"] == "data_parallel"
        assert build["from_pretrained"]["device_map"] == {"": f"cuda:{rank}"}
        assert build["gpus"]["local_ordinals"] == [rank] and build["gpus"]["physical"] == [str(4 + rank)]
        assert build["gpus"]["cuda_visible_devices"] == "4,5,6,7"
        assert build["plan"]["num_replicas"] == 4 and build["plan"]["warnings"] == []


def test_two_nodes_of_eight_gpus_give_global_ranks_0_to_15(dry_run):
    shards = set()
    for rank in range(16):
        build = dry_run(f"pretrained={CONFIGS / 'llama-2-7b'}", "8x80GiB", **_accelerate(rank, 16, 8))
        assert build["strategy"] == "data_parallel" and build["plan"]["num_replicas"] == 16
        assert build["process"]["node_rank"] == rank // 8 and build["process"]["local_rank"] == rank % 8
        assert build["from_pretrained"]["device_map"] == {"": f"cuda:{rank % 8}"}
        assert build["process_group"]["rank"] == rank and build["process_group"]["world_size"] == 16
        shards.add(build["data_shard"]["rank"])
    assert shards == set(range(16))  # the global rank, not the node-local one that repeats per node
    _nothing_touched_cuda_or_a_group()


def test_seed_case_through_the_lm_eval_cli(tmp_path, scratch_env):
    """The same seed case as a user types it: ``lm_eval --model hf_ext``, exit 0, one file."""
    out = tmp_path / "build.json"
    env = {**scratch_env, "LM_EVAL_EXT_DRY_RUN": str(out), "LM_EVAL_EXT_HARDWARE": "2x24GiB",
           "PYTHONPATH": str(ROOT)}
    for name in LAUNCH_VARS:
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf_ext", "--model_args",
                           f"pretrained={CONFIGS / 'qwen2.5-14b'}", "--tasks", "ext_arith_mc",
                           "--include_path", str(ROOT / "tasks"), "--output_path", str(tmp_path / "results")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    build = json.loads(out.read_text())
    assert build["strategy"] == "model_split" and set(build["from_pretrained"]["max_memory"]) == {"0", "1"}
    assert "stopping before weights are loaded" in done.stderr
    assert not (tmp_path / "results").exists()  # nothing was evaluated


def test_described_hardware_is_ignored_outside_a_dry_run():
    from lm_eval_ext.plan.dry_run import described_hardware
    from lm_eval_ext.plan.launch import Launch

    assert described_hardware(Launch(), {"LM_EVAL_EXT_HARDWARE": "8x80GiB"}) is None
    assert len(described_hardware(Launch(), {"LM_EVAL_EXT_HARDWARE": "8x80GiB",
                                                "LM_EVAL_EXT_DRY_RUN": os.devnull}).gpus) == 8


def test_a_cuda_0_device_under_four_processes_leaves_each_its_own_gpu(dry_run):
    """``--device cuda:0`` (also lm-eval's CLI default) must not put four ranks on one GPU."""
    for rank in range(4):
        build = dry_run(f"pretrained={CONFIGS / 'llama-2-7b'},device=cuda:0", "4x24GiB", **_accelerate(rank, 4))
        assert build["strategy"] == "data_parallel"
        assert build["from_pretrained"]["device_map"] == {"": f"cuda:{rank}"}


def test_hybrid_dry_run_under_a_real_torchrun_launch(tmp_path, scratch_env):
    """The launcher sets the variables itself: two ranks, each writes its slice, both exit 0
    before accelerate initialises a process group (torchrun would hang or fail otherwise)."""
    env = {**scratch_env, "LM_EVAL_EXT_DRY_RUN": str(tmp_path / "build-{rank}.json"),
           "LM_EVAL_EXT_HARDWARE": "8x80GiB", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for name in LAUNCH_VARS:
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "lm_eval", "--model", "hf_ext", "--model_args",
                           f"pretrained={CONFIGS / 'llama-3-70b'},strategy=hybrid", "--tasks", "ext_arith_mc",
                           "--include_path", str(ROOT / "tasks")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank, slice_ in ((0, ["0", "1", "2", "3"]), (1, ["4", "5", "6", "7"])):
        build = json.loads((tmp_path / f"build-{rank}.json").read_text())
        assert build["process"]["rank"] == rank and build["process"]["world_size"] == 2
        assert sorted(build["from_pretrained"]["max_memory"]) == slice_
        assert build["process_group"]["backend"] == "nccl"
