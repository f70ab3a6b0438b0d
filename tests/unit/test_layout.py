"""Plan -> what hf_ext hands to HFLM/accelerate, on described GPUs (no torch.cuda needed)."""

from dataclasses import replace

import pytest
from tests.unit.planner_fixtures import CONFIGS, facts

from lm_eval_ext.hf.config import HfExtConfig
from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.hardware import describe_hardware
from lm_eval_ext.plan.launch import Launch
from lm_eval_ext.plan.build import layout_from_plan
from lm_eval_ext.plan.hf_settings import plan_request
from lm_eval_ext.plan.layout import build_layout
from lm_eval_ext.plan.threads import apply_omp_default
from lm_eval_ext.plan.types import PlanRequest, Strategy
from lm_eval_ext.plan.planner import plan
from lm_eval_ext.units import GiB


def _launched(hardware, world, local_rank):
    return replace(hardware, launch=Launch.resolve(world_size=world, local_world_size=world, rank=local_rank,
                                                   local_rank=local_rank, omp_num_threads="1"))


def test_hybrid_process_takes_its_own_contiguous_slice():
    hardware = _launched(describe_hardware("8x16GiB"), 4, 2)
    chosen = plan(facts("llama-3-8b"), hardware, PlanRequest(num_processes=4))
    assert chosen.strategy == Strategy.HYBRID and chosen.gpus_per_replica == 2
    layout = layout_from_plan(chosen, device="cuda", hardware=hardware, offload_folder="off")
    assert list(layout.accelerate_args["max_memory"]) == [4, 5] and layout.device == "cuda:4"
    assert layout.accelerate_args["device_map"] == "auto" and layout.parallelize


def test_model_split_uses_planned_max_memory_not_stock_defaults():
    hardware = describe_hardware("24GiB,24GiB")
    chosen = plan(facts("qwen2.5-14b"), hardware, PlanRequest(num_processes=1))
    layout = layout_from_plan(chosen, device="cuda", hardware=hardware, offload_folder="off")
    assert layout.accelerate_args["max_memory"] == dict(enumerate(chosen.max_memory_per_gpu_bytes))
    assert "cpu" not in layout.accelerate_args["max_memory"]  # nothing may silently spill to RAM or disk


def test_gpu_offload_adds_the_cpu_budget():
    hardware = describe_hardware("2x24GiB", cpu_ram_bytes=512 * GiB)
    chosen = plan(facts("llama-3-70b"), hardware, PlanRequest(num_processes=1))
    layout = layout_from_plan(chosen, device="cuda", hardware=hardware, offload_folder="off")
    assert chosen.strategy == Strategy.CPU_OFFLOAD
    assert layout.accelerate_args["max_memory"]["cpu"] == chosen.max_cpu_memory_bytes
    assert layout.model_info()["lm_eval_ext_plan"]["strategy"] == "cpu_offload"


def test_data_parallel_keeps_stock_placement():
    hardware = _launched(describe_hardware("4x24GiB"), 4, 1)
    chosen = plan(facts("llama-2-7b", "bfloat16"), hardware, PlanRequest(num_processes=4))
    layout = layout_from_plan(chosen, device="cuda", hardware=hardware, offload_folder="off")
    assert layout.accelerate_args is None and layout.hflm_overrides() == {"device": "cuda", "parallelize": False}


def _config(name, **extra):
    return HfExtConfig.from_model_args({"pretrained": str(CONFIGS / name), **extra})


def test_plan_request_reads_user_settings():
    hardware = _launched(describe_hardware("4x24GiB"), 2, 0)
    request = plan_request(_config("gpt2", parallelize=True, max_memory_per_gpu="20GiB", max_cpu_memory="64GB"),
                           hardware)
    assert (request.strategy, request.num_processes) == ("hybrid", 2)
    assert request.max_memory_per_gpu_bytes == 20 * GiB and request.max_cpu_memory_bytes == 64 * 10**9
    assert plan_request(_config("gpt2", parallelize=True), describe_hardware("2x24GiB")).strategy == "model_split"
    with pytest.raises(UserError, match="max_memory_per_gpu='20 parsecs' has unknown unit"):
        plan_request(_config("gpt2", max_memory_per_gpu="20 parsecs"), hardware)


def test_build_layout_on_described_gpus():
    hardware = replace(describe_hardware("24GiB,24GiB"), launch=Launch.resolve(omp_num_threads="1"))
    layout = build_layout(_config("qwen2.5-14b"), device="cuda", dtype="auto", environ={}, hardware=hardware)
    assert layout.plan.strategy == Strategy.MODEL_SPLIT and layout.device == "cuda:0"


def test_pinned_device_cannot_hold_a_split():
    hardware = replace(describe_hardware("24GiB,24GiB"), launch=Launch.resolve(omp_num_threads="1"))
    with pytest.raises(UserError, match=r"with 1 GPU\(s\) per replica does not hold.*device=cuda:1 limits the plan"):
        build_layout(_config("qwen2.5-14b", strategy="model_split"), device="cuda:1", dtype="auto",
                     environ={}, hardware=hardware)
    with pytest.raises(UserError, match=r"device=cuda:5 does not exist: 2 GPU\(s\) are visible"):
        build_layout(_config("qwen2.5-14b"), device="cuda:5", dtype="auto", environ={}, hardware=hardware)


def test_build_layout_stops_on_broken_launch_variables():
    hardware = replace(describe_hardware("2x24GiB"), launch=Launch.resolve(world_size=2, rank=0))
    with pytest.raises(UserError, match="preflight: WORLD_SIZE=2 is set but LOCAL_RANK is not"):
        build_layout(_config("gpt2"), device="cuda", dtype="auto", environ={}, hardware=hardware)


def test_build_layout_stops_when_the_launch_cannot_hold_the_plan():
    hardware = _launched(describe_hardware("2x24GiB"), 4, 0)
    with pytest.raises(UserError, match="num_processes=4 is more than the GPUs allow"):
        build_layout(_config("gpt2"), device="cuda", dtype="auto", environ={}, hardware=hardware)


def test_omp_default_is_set_and_logged(caplog):
    hardware = replace(describe_hardware("", num_cpu_cores=8), launch=Launch.resolve(world_size=2, local_world_size=2))
    environ = {}
    with caplog.at_level("INFO", logger="lm_eval_ext.plan.threads"):
        assert apply_omp_default(hardware, environ) == 4
    assert environ == {"OMP_NUM_THREADS": "4"}
    assert "OMP_NUM_THREADS was unset; set to 4 (8 cores / 2 local processes)" in caplog.text
    assert apply_omp_default(replace(hardware, launch=Launch.resolve(omp_num_threads="2")), environ) is None
