"""Each diagnostic, triggered once, with its message checked."""

from dataclasses import replace

import pytest
from tests.unit.planner_fixtures import facts

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.hardware import Gpu, describe_hardware
from lm_eval_ext.plan.launch import Launch
from lm_eval_ext.plan.types import PlanRequest
from lm_eval_ext.plan.planner import plan
from lm_eval_ext.plan.preflight import check, omp_num_threads_default, omp_num_threads_to_set, raise_errors
from lm_eval_ext.units import GiB


def _with_launch(hardware, **launch):
    return replace(hardware, launch=Launch.resolve(**launch))


def _codes(findings):
    return [f.code for f in findings]


def test_world_size_without_local_rank():
    hardware = _with_launch(describe_hardware("2x24GiB"), world_size=2, rank=0)
    findings = check(hardware)
    assert _codes(findings) == ["local_rank_missing"]
    assert "WORLD_SIZE=2 is set but LOCAL_RANK is not" in findings[0].message
    with pytest.raises(UserError, match="preflight: WORLD_SIZE=2 is set but LOCAL_RANK is not"):
        raise_errors(findings)


def test_rank_outside_world():
    findings = check(_with_launch(describe_hardware("2x24GiB"), world_size=2, rank=5, local_rank=0))
    assert _codes(findings) == ["rank_out_of_range"] and "RANK=5 is outside WORLD_SIZE=2" in findings[0].message


def test_local_rank_outside_local_world():
    findings = check(_with_launch(describe_hardware("2x24GiB"), world_size=2, local_world_size=2, rank=1, local_rank=2))
    assert "LOCAL_RANK=2 is outside LOCAL_WORLD_SIZE=2" in findings[0].message


def test_local_rank_not_a_visible_device():
    hardware = _with_launch(describe_hardware("1x24GiB"), world_size=2, local_world_size=2, rank=1,
                            local_rank=1, cuda_visible_devices="0")
    findings = check(hardware)
    assert _codes(findings) == ["local_rank_not_visible"]
    assert "LOCAL_RANK=1 has no GPU of its own" in findings[0].message
    assert "CUDA_VISIBLE_DEVICES=0" in findings[0].message and "invalid device ordinal" in findings[0].message


def test_more_processes_than_gpus():
    hardware = _with_launch(describe_hardware("2x24GiB"), world_size=4, local_world_size=4, rank=0, local_rank=0)
    findings = check(hardware)
    assert _codes(findings) == ["too_many_processes"]
    assert "4 processes per node x 1 GPU(s) each need 4 GPUs, but 2 are visible" in findings[0].message


def test_hybrid_slices_count_in_the_process_check():
    model = facts("qwen2.5-14b")
    hardware = describe_hardware("4x24GiB")
    result = plan(model, hardware, PlanRequest())  # hybrid: 2 processes x 2 GPUs
    busy = _with_launch(hardware, world_size=3, local_world_size=3, rank=0, local_rank=0)
    assert "3 processes per node x 2 GPU(s) each need 6 GPUs" in check(busy, result)[0].message


def test_several_gpus_one_process_says_how_to_launch():
    model = facts("llama-2-7b", "bfloat16")
    hardware = describe_hardware("4x24GiB")
    result = plan(model, hardware, PlanRequest(num_processes=1))
    findings = check(hardware, result)
    assert _codes(findings) == ["one_process_many_gpus"] and findings[0].level == "warning"
    assert "accelerate launch --num_processes 4 -m lm_eval --model hf_ext" in findings[0].message
    raise_errors(findings)  # a warning never stops the run


def test_plan_needs_more_memory_than_free():
    model = facts("llama-2-7b", "bfloat16")
    planned_on = describe_hardware("1x24GiB")
    result = plan(model, planned_on, PlanRequest())
    busy = replace(planned_on, gpus=(Gpu("A10", 24 * GiB, 9 * GiB),))
    findings = check(busy, result)
    assert _codes(findings) == ["not_enough_free_memory"]
    assert "GPU 0 (A10) has 9.0 GiB free but the plan puts 12.6 GiB of weights there" in findings[0].message
    assert "another process holds 15.0 GiB (see nvidia-smi)" in findings[0].message


def test_user_max_memory_leaving_little_headroom_only_warns():
    model = facts("qwen2.5-14b")
    hardware = describe_hardware("24GiB,24GiB")
    result = plan(model, hardware, PlanRequest(num_processes=1, max_memory_per_gpu_bytes=22 * GiB))
    findings = check(hardware, result)
    assert _codes(findings) == ["little_headroom", "little_headroom"]
    assert all(f.level == "warning" for f in findings)
    assert "GPU 0 (GPU) keeps 2.0 GiB beside the weights, less than the planned 6.9 GiB" in findings[0].message


def test_cpu_plan_needs_more_ram_than_the_machine_has():
    model = facts("llama-2-7b")
    result = plan(model, describe_hardware("", cpu_ram_bytes=64 * GiB), PlanRequest(num_processes=2))
    small = _with_launch(describe_hardware("", cpu_ram_bytes=20 * GiB), world_size=2, local_world_size=2,
                         rank=0, local_rank=0)
    findings = check(small, result)
    assert _codes(findings) == ["not_enough_ram"] and "use fewer processes" in findings[0].message


def test_a_consistent_launch_has_no_findings():
    model = facts("llama-2-7b", "bfloat16")
    hardware = describe_hardware("4x24GiB")
    result = plan(model, hardware, PlanRequest())
    launched = _with_launch(hardware, world_size=4, local_world_size=4, rank=2, local_rank=2)
    assert check(launched, result) == []


@pytest.mark.parametrize("cores, procs, expected", [(16, 4, 4), (2, 1, 2), (2, 4, 1), (0, 0, 1)])
def test_omp_default(cores, procs, expected):
    assert omp_num_threads_default(cores, procs) == expected


def test_omp_left_alone_when_set():
    hardware = replace(describe_hardware("", num_cpu_cores=8), launch=Launch.resolve(omp_num_threads="3"))
    assert omp_num_threads_to_set(hardware) is None
    unset = replace(describe_hardware("", num_cpu_cores=8), launch=Launch.resolve(world_size=2, local_world_size=2))
    assert omp_num_threads_to_set(unset) == 4


# issue 16: impossible hand-set launches fail in one line before accelerate's traceback

def test_a_local_rank_beyond_the_world_cannot_exist():
    findings = check(_with_launch(describe_hardware(""), world_size=2, rank=1, local_rank=5))
    assert _codes(findings) == ["local_rank_beyond_world"]
    with pytest.raises(UserError) as failure:
        raise_errors(findings)
    assert str(failure.value) == (
        "preflight: LOCAL_RANK=5 cannot exist with WORLD_SIZE=2 (a node runs at most WORLD_SIZE processes, so "
        "LOCAL_RANK is 0..1); unset hand-set LOCAL_RANK/RANK/WORLD_SIZE and start with `accelerate launch` or "
        "`torchrun`")


def test_a_hand_set_world_without_rank_zeros_address_is_refused():
    from lm_eval_ext.plan.preflight import check_rendezvous

    findings = check_rendezvous(Launch.resolve(world_size=2, rank=1, local_rank=1))
    assert [f.message for f in findings] == [
        "WORLD_SIZE=2 starts 2 processes, but MASTER_ADDR and MASTER_PORT are not set, so rank 1 cannot find "
        "rank 0; start with `accelerate launch` or `torchrun` (they set it), set MASTER_ADDR/MASTER_PORT to rank "
        "0's host and a free port, or unset WORLD_SIZE to run one process"]
    assert check_rendezvous(Launch.resolve(world_size=2, rank=1, local_rank=1, master_addr="h", master_port="1")) == []
    assert check_rendezvous(Launch()) == []


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_omp_num_threads_must_be_a_positive_integer(value):
    findings = check(_with_launch(describe_hardware(""), omp_num_threads=value))
    assert [f.message for f in findings] == [
        f"OMP_NUM_THREADS={value!r} must be a positive integer (threads per process); set e.g. OMP_NUM_THREADS=4, "
        "or unset it to let lm-eval-ext use cores / local processes"]


def test_good_omp_num_threads_passes():
    assert check(_with_launch(describe_hardware(""), omp_num_threads="3")) == []
