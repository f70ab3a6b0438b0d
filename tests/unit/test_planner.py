"""The planner over real architectures and described hardware (pure: no GPU, no weights)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.unit.planner_fixtures import facts

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.hardware import Gpu, describe_hardware
from lm_eval_ext.plan.types import PlanRequest, Strategy, hf_headroom_bytes
from lm_eval_ext.plan.planner import plan
from lm_eval_ext.plan.vllm_policy import kv_bytes_per_token_per_gpu, kv_capacity_tokens
from lm_eval_ext.units import GiB

# model, dtype, --gpus, nodes, backend, request extras -> backend, strategy, replicas, GPUs/replica, tp, pp, max_model_len
TABLE = [
    ("qwen2.5-14b", "auto", "24GiB,24GiB", 1, "hf", {}, "hf", "model_split", 1, 2, 1, 1, None),  # seed: 30 GB on 2x24
    ("llama-2-7b", "bfloat16", "4x24GiB", 1, "hf", {}, "hf", "data_parallel", 4, 1, 1, 1, None),  # seed: 7B bf16
    ("mistral-7b", "auto", "4x24GiB", 1, "hf", {}, "hf", "data_parallel", 4, 1, 1, 1, None),
    ("llama-3-8b", "auto", "8x16GiB", 1, "hf", {}, "hf", "hybrid", 4, 2, 1, 1, None),
    ("llama-3-8b", "auto", "1x16GiB", 1, "hf", {}, "hf", "cpu_offload", 1, 1, 1, 1, None),
    ("llama-3-70b", "auto", "8x80GiB", 1, "hf", {}, "hf", "hybrid", 4, 2, 1, 1, None),
    ("llama-3-70b", "auto", "8x80GiB", 1, "vllm", {}, "vllm", "tensor_data_parallel", 2, 4, 4, 1, 8192),
    ("llama-3-70b", "auto", "4x40GiB", 2, "vllm", {}, "vllm", "pipeline_parallel", 1, 8, 4, 2, 8192),
    ("llama-3-70b", "auto", "4x40GiB", 2, "hf", {}, "hf", "hybrid", 2, 4, 1, 1, None),
    ("llama-3-70b", "auto", "8x141GB", 1, "auto", {}, "vllm", "tensor_data_parallel", 4, 2, 2, 1, 8192),
    ("llama-2-70b", "auto", "8x141GB", 1, "vllm", {}, "vllm", "tensor_data_parallel", 4, 2, 2, 1, 4096),
    ("llama-2-70b", "auto", "2x141GB", 1, "hf", {}, "hf", "model_split", 1, 2, 1, 1, None),
    ("mixtral-8x7b", "auto", "2x80GiB", 1, "hf", {}, "hf", "model_split", 1, 2, 1, 1, None),
    ("mixtral-8x7b", "auto", "2x80GiB", 1, "auto", {}, "vllm", "tensor_parallel", 1, 2, 2, 1, 32768),
    ("mixtral-8x7b", "auto", "8x80GiB", 1, "vllm", {}, "vllm", "tensor_data_parallel", 4, 2, 2, 1, 32768),
    ("qwen2.5-0.5b", "auto", "8x16GiB", 1, "hf", {}, "hf", "data_parallel", 8, 1, 1, 1, None),
    ("qwen2.5-0.5b", "auto", "1x16GiB", 1, "vllm", {}, "vllm", "single", 1, 1, 1, 1, 32768),
    ("qwen2.5-7b", "auto", "1x24GiB", 1, "vllm", {}, "vllm", "single", 1, 1, 1, 1, 26880),  # window cut
    ("qwen2.5-7b", "auto", "2x24GiB", 1, "vllm", {}, "vllm", "tensor_parallel", 1, 2, 2, 1, 131072),
    ("qwen2.5-32b", "auto", "2x40GiB", 1, "hf", {}, "hf", "model_split", 1, 2, 1, 1, None),
    ("qwen2.5-32b", "auto", "4x40GiB", 1, "vllm", {}, "vllm", "tensor_parallel", 1, 4, 4, 1, 131072),
    ("qwen2.5-72b", "auto", "8x80GiB", 1, "vllm", {}, "vllm", "tensor_data_parallel", 2, 4, 4, 1, 131072),
    ("qwen2.5-72b", "auto", "2x24GiB", 1, "hf", {}, "hf", "cpu_offload", 1, 2, 1, 1, None),
    ("gemma-7b", "auto", "4x24GiB", 1, "hf", {}, "hf", "hybrid", 2, 2, 1, 1, None),  # 256k vocab: big logits
    ("gemma-2b", "auto", "1x16GiB", 1, "hf", {}, "hf", "single", 1, 1, 1, 1, None),
    ("gemma-2-9b", "auto", "2x40GiB", 1, "hf", {}, "hf", "model_split", 1, 2, 1, 1, None),  # float32 config
    ("gemma-2-9b", "bfloat16", "2x40GiB", 1, "hf", {}, "hf", "data_parallel", 2, 1, 1, 1, None),
    ("falcon-7b", "auto", "4x24GiB", 1, "vllm", {}, "vllm", "data_parallel", 4, 1, 1, 1, 2048),  # 71 heads
    ("falcon-40b", "auto", "8x24GiB", 1, "vllm", {}, "vllm", "tensor_parallel", 1, 8, 8, 1, 2048),
    ("gpt2", "auto", "", 1, "hf", {}, "hf", "single", 1, 0, 1, 1, None),
    ("gpt2", "auto", "", 1, "hf", {"num_processes": 2}, "hf", "data_parallel", 2, 0, 1, 1, None),
    ("gpt2-xl", "auto", "2x16GiB", 1, "vllm", {}, "vllm", "data_parallel", 2, 1, 1, 1, 1024),
    ("pythia-12b", "auto", "2x24GiB", 1, "hf", {}, "hf", "model_split", 1, 2, 1, 1, None),
    ("pythia-1.4b", "auto", "8x24GiB", 1, "vllm", {}, "vllm", "data_parallel", 8, 1, 1, 1, 2048),
    ("llama-2-7b-gptq", "auto", "1x16GiB", 1, "hf", {}, "hf", "single", 1, 1, 1, 1, None),
    ("llama-3-8b-bnb-4bit", "auto", "1x16GiB", 1, "hf", {}, "hf", "single", 1, 1, 1, 1, None),
    ("llama-2-13b", "auto", "4x24GiB", 2, "hf", {}, "hf", "hybrid", 4, 2, 1, 1, None),
    ("llama-2-13b", "auto", "4x24GiB", 1, "hf", {"num_processes": 1}, "hf", "model_split", 1, 2, 1, 1, None),
    ("llama-2-7b", "bfloat16", "4x24GiB", 1, "auto", {}, "hf", "data_parallel", 4, 1, 1, 1, None),
]


def _plan(name, dtype, gpus, nodes, backend, extra):
    return plan(facts(name, dtype), describe_hardware(gpus, num_nodes=nodes), PlanRequest(backend=backend, **extra))


def test_table_has_enough_cases():
    assert len(TABLE) >= 25


@pytest.mark.parametrize("case", TABLE, ids=lambda c: f"{c[0]}-{c[1]}-{c[2] or 'cpu'}-n{c[3]}-{c[4]}")
def test_planning_table(case):
    name, dtype, gpus, nodes, backend, extra, *expected = case
    model = facts(name, dtype)
    result = _plan(name, dtype, gpus, nodes, backend, extra)
    got = [result.backend, result.strategy.value, result.num_replicas, result.gpus_per_replica,
           result.tensor_parallel_size, result.pipeline_parallel_size, result.max_model_len]
    assert got == expected
    assert result.weights_bytes == model.weights_bytes
    assert result.kv_bytes_per_token == model.kv_bytes_per_token
    assert result.reasons and all(r.endswith(".") for r in result.reasons)
    _assert_memory_holds(result, describe_hardware(gpus, num_nodes=nodes), model)


def _assert_memory_holds(result, hardware, model):
    """Whatever was chosen, the arithmetic must close: weights + reserve fit each GPU it uses."""
    if not hardware.gpus:
        assert result.device == "cpu"
        return
    total = hardware.gpus[0].total_bytes
    if result.backend == "vllm":
        stages = result.tensor_parallel_size * result.pipeline_parallel_size
        assert result.num_replicas * stages <= hardware.num_gpus
        budget = int(total * result.gpu_memory_utilization)
        capacity = kv_capacity_tokens(model, budget, result.headroom_bytes, result.tensor_parallel_size,
                                      result.pipeline_parallel_size)
        assert capacity >= result.max_model_len
        assert model.num_attention_heads % result.tensor_parallel_size == 0
    elif result.strategy == Strategy.CPU_OFFLOAD:
        assert sum(result.max_memory_per_gpu_bytes) + result.cpu_offload_bytes >= model.weights_bytes
    else:
        assert result.num_replicas * result.gpus_per_replica <= hardware.num_gpus
        on_one_gpu = model.weights_bytes if result.gpus_per_replica == 1 else max(result.max_memory_per_gpu_bytes)
        assert on_one_gpu + result.headroom_bytes <= total
        if result.gpus_per_replica > 1:
            assert sum(result.max_memory_per_gpu_bytes) >= model.weights_bytes
            assert sum(result.max_memory_per_gpu_bytes[:-1]) < model.weights_bytes  # the smallest slice


def test_seed_30gb_on_two_24gb_cards_cannot_be_data_parallel():
    model = facts("qwen2.5-14b")
    assert 29e9 < model.weights_bytes < 31e9
    result = _plan("qwen2.5-14b", "auto", "24GiB,24GiB", 1, "hf", {})
    assert result.strategy == Strategy.MODEL_SPLIT and result.gpus_per_replica == 2
    assert len(result.max_memory_per_gpu_bytes) == 2
    # the numbers of the worked example in planner.py's docstring
    assert round(model.weights_bytes / GiB, 1) == 27.5 and round(result.headroom_bytes / GiB, 1) == 6.9
    assert [round(b / GiB, 1) for b in result.max_memory_per_gpu_bytes] == [17.1, 17.1]
    with pytest.raises(UserError, match="strategy=data_parallel needs one GPU to hold the whole model"):
        _plan("qwen2.5-14b", "auto", "24GiB,24GiB", 1, "hf", {"strategy": "data_parallel"})


def test_seed_7b_bf16_on_four_24gb_cards_is_data_parallel():
    result = _plan("llama-2-7b", "bfloat16", "4x24GiB", 1, "hf", {})
    assert (result.strategy, result.num_replicas, result.num_processes) == (Strategy.DATA_PARALLEL, 4, 4)
    assert result.to_json()["data_parallel_size"] == 4


def test_plan_json_has_the_documented_keys():
    payload = _plan("llama-3-70b", "auto", "8x80GiB", 1, "vllm", {}).to_json()
    for key in ("backend", "strategy", "num_replicas", "gpus_per_replica", "tensor_parallel_size",
                "data_parallel_size", "pipeline_parallel_size", "weights_bytes", "kv_bytes_per_token",
                "max_model_len", "reasons"):
        assert key in payload
    assert isinstance(payload["reasons"], list) and isinstance(payload["reasons"][0], str)


def test_decision_follows_memory_not_size_class():
    """The same 7B model flips from one card to two when the headroom grows, with nothing else changed."""
    small = _plan("llama-2-7b", "bfloat16", "2x20GiB", 1, "hf", {"activation_tokens": 1024})
    large = _plan("llama-2-7b", "bfloat16", "2x20GiB", 1, "hf", {"activation_tokens": 8192})
    assert small.strategy == Strategy.DATA_PARALLEL and large.strategy == Strategy.MODEL_SPLIT
    assert large.headroom_bytes == hf_headroom_bytes(facts("llama-2-7b", "bfloat16"), 8192)


def test_free_memory_not_total_decides():
    busy = replace(describe_hardware("2x24GiB"), gpus=(Gpu("A", 24 * GiB, 14 * GiB),) * 2)
    result = plan(facts("llama-2-7b", "bfloat16"), busy, PlanRequest())
    assert result.strategy == Strategy.MODEL_SPLIT


def test_explicit_single_uses_one_gpu_even_when_more_are_there():
    result = _plan("llama-2-7b", "bfloat16", "4x24GiB", 1, "hf", {"strategy": "single"})
    assert (result.strategy, result.num_replicas, result.num_processes) == (Strategy.SINGLE, 1, 1)
    assert "3 GPU(s) per node stay idle" in result.warnings[0]


def test_user_max_memory_per_gpu_wins():
    result = _plan("llama-2-7b", "bfloat16", "4x24GiB", 1, "hf", {"max_memory_per_gpu_bytes": 8 * GiB})
    assert result.strategy == Strategy.HYBRID and result.max_memory_per_gpu_bytes == (8 * GiB, 8 * GiB)


def test_fewer_processes_than_slices_warns_about_idle_gpus():
    result = _plan("llama-2-13b", "auto", "4x24GiB", 1, "hf", {"num_processes": 1})
    assert result.warnings == ("2 GPU(s) per node stay idle with 1 process(es) per node; launch 2 processes to use them",)


def test_vllm_kv_heads_replicate_beyond_their_count():
    model = facts("llama-3-70b")  # 8 KV heads
    assert kv_bytes_per_token_per_gpu(model, 8, 1) == model.kv_bytes_per_token // 8
    assert kv_bytes_per_token_per_gpu(model, 16, 1) == kv_bytes_per_token_per_gpu(model, 8, 1)
    assert kv_bytes_per_token_per_gpu(model, 4, 2) == model.kv_bytes_per_token // 8


def test_vllm_explicit_max_model_len_is_not_cut():
    result = _plan("qwen2.5-7b", "auto", "1x24GiB", 1, "vllm", {"max_model_len": 8192})
    assert result.max_model_len == 8192 and not any("cut" in r for r in result.reasons)
    with pytest.raises(UserError, match="does not fit"):
        _plan("qwen2.5-7b", "auto", "1x24GiB", 1, "vllm", {"max_model_len": 131072})


def test_vllm_busy_gpu_lowers_utilization():
    busy = replace(describe_hardware("1x80GiB"), gpus=(Gpu("H100", 80 * GiB, 60 * GiB),))
    result = plan(facts("llama-3-8b"), busy, PlanRequest(backend="vllm"))
    assert result.gpu_memory_utilization == 0.74
    assert any("lowered to 0.74" in w for w in result.warnings)
    with pytest.raises(UserError, match=r"gpu_memory_utilization=0.9 needs 90% of each GPU free, but only 75%"):
        plan(facts("llama-3-8b"), busy, PlanRequest(backend="vllm", gpu_memory_utilization=0.9))


def test_auto_without_vllm_installed_chooses_hf():
    result = _plan("mixtral-8x7b", "auto", "2x80GiB", 1, "auto", {"vllm_available": False})
    assert result.backend == "hf" and "vLLM is not installed" in result.reasons[-1]


# ---------------------------------------------------------------- every refusal names the fix

def _count_in(message: str) -> int:
    import re

    return int(re.search(r"--gpus (\d+)x", message).group(1))


def test_no_fit_suggests_the_smallest_gpu_count_that_really_fits():
    with pytest.raises(UserError) as info:
        _plan("qwen2.5-72b", "auto", "1x24GiB", 1, "vllm", {})
    message = str(info.value)
    assert "does not fit 1 x GPU (24.0 GiB) with backend=vllm" in message
    assert "Smallest changes that fit:" in message
    count = _count_in(message)
    assert _plan("qwen2.5-72b", "auto", f"{count}x24GiB", 1, "vllm", {}).backend == "vllm"
    with pytest.raises(UserError):
        _plan("qwen2.5-72b", "auto", f"{count - 1}x24GiB", 1, "vllm", {})


def test_no_fit_suggests_a_smaller_dtype():
    with pytest.raises(UserError) as info:
        _plan("gemma-2-9b", "float32", "1x40GiB", 1, "vllm", {"max_model_len": 8192})
    assert "dtype=bfloat16:" in str(info.value)
    assert _plan("gemma-2-9b", "bfloat16", "1x40GiB", 1, "vllm", {"max_model_len": 8192}).strategy == Strategy.SINGLE


def test_no_fit_suggests_offload_when_it_was_not_allowed():
    with pytest.raises(UserError, match=r"strategy=cpu_offload \(layers that do not fit the GPUs stay in CPU RAM"):
        _plan("llama-3-70b", "auto", "2x24GiB", 1, "hf", {"allow_offload": False})


def test_nothing_fits_at_all():
    hardware = describe_hardware("1x16GiB", cpu_ram_bytes=8 * GiB)
    with pytest.raises(UserError, match="No single change tried fits"):
        plan(facts("llama-2-70b", "float32"), hardware, PlanRequest(backend="vllm"))


def test_cpu_only_machine_too_small_suggests_gpus():
    hardware = describe_hardware("", cpu_ram_bytes=16 * GiB)
    with pytest.raises(UserError, match=r"CPU RAM cannot hold one replica.*GPUs of 80.0 GiB \(--gpus \d+x80GiB"):
        plan(facts("llama-3-70b"), hardware, PlanRequest())


@pytest.mark.parametrize("model, gpus, extra, message", [
    ("falcon-7b", "4x24GiB", {"tensor_parallel_size": 2},
     "tensor_parallel_size=2 must divide num_attention_heads=71; use 1"),
    ("qwen2.5-7b", "8x24GiB", {"tensor_parallel_size": 7},
     "tensor_parallel_size=7 must divide num_key_value_heads=4 or be a multiple of it; use 1, 2, 4"),
    ("llama-3-8b", "4x24GiB", {"tensor_parallel_size": 8},
     "tensor_parallel_size=8 exceeds the 4 GPU(s) of a node"),
    ("llama-3-8b", "4x24GiB", {"data_parallel_size": 8}, "data_parallel_size=8 needs 8 GPUs"),
    ("llama-3-8b", "1x80GiB", {"max_model_len": 100000}, "max_model_len=100000 exceeds the model's window of 8192"),
    ("llama-3-8b", "1x80GiB", {"gpu_memory_utilization": 1.5}, "gpu_memory_utilization=1.5 must be in (0, 1]"),
    ("llama-3-8b", "1x80GiB", {"pipeline_parallel_size": 64, "strategy": "pipeline_parallel"},
     "pipeline_parallel_size=64 exceeds the 32 layers"),
])
def test_vllm_refusals(model, gpus, extra, message):
    with pytest.raises(UserError) as info:
        _plan(model, "auto", gpus, 1, "vllm", extra)
    assert message in str(info.value)


@pytest.mark.parametrize("gpus, nodes, extra, message", [
    ("4x24GiB", 1, {"num_processes": 8}, "num_processes=8 is more than the GPUs allow: each replica needs 1 GPU(s)"),
    ("4x24GiB", 2, {"num_processes": 3}, "num_processes=3 must be a positive multiple of the node count (2)"),
    ("4x24GiB", 1, {"strategy": "tensor_parallel"}, "strategy='tensor_parallel' is not a hf strategy"),
    ("2x16GiB", 1, {"strategy": "single"}, "strategy=single needs one GPU to hold the whole model"),
    ("", 1, {"strategy": "model_split"}, "strategy=model_split splits a model over GPUs, and none is visible"),
    ("", 1, {"num_processes": 64}, "use at most"),
    ("2x24GiB", 1, {"strategy": "cpu_offload", "num_processes": 2}, "cpu_offload runs one process per node"),
    ("4x24GiB", 1, {"activation_tokens": 0}, "activation_tokens=0 must be at least 1"),
    ("4x24GiB", 1, {"strategy": "data_parallel", "num_processes": 1},
     "strategy=data_parallel needs several processes, but one was started; launch with `accelerate launch"),
    ("", 1, {"strategy": "hybrid", "num_processes": 1}, "strategy=hybrid needs several processes"),
    ("4x24GiB", 2, {"strategy": "single"}, "strategy=single runs one process on one GPU"),
])
def test_hf_refusals(gpus, nodes, extra, message):
    with pytest.raises(UserError) as info:
        _plan("llama-3-8b", "auto", gpus, nodes, "hf", extra)
    assert message in str(info.value)


def test_bad_backend_is_refused():
    with pytest.raises(UserError, match="backend='tgi' is not valid; use one of: hf, vllm, auto"):
        plan(facts("gpt2"), describe_hardware(""), PlanRequest(backend="tgi"))


def test_explicit_cpu_offload_on_cpu_spills_to_disk_with_a_warning():
    hardware = describe_hardware("", cpu_ram_bytes=8 * GiB)
    result = plan(facts("llama-2-7b"), hardware, PlanRequest(strategy="cpu_offload"))
    assert result.strategy == Strategy.CPU_OFFLOAD and result.device == "cpu"
    assert result.max_cpu_memory_bytes == int(8 * GiB * 0.85)
    assert "disk offload" in result.warnings[0]


def test_vllm_on_cpu_is_one_engine_unless_sizes_are_given():
    result = _plan("qwen2.5-0.5b", "auto", "", 1, "vllm", {})
    assert (result.device, result.strategy, result.max_model_len) == ("cpu", Strategy.SINGLE, 32768)
    assert (result.tensor_parallel_size, result.data_parallel_size) == (1, 1)
    # vLLM's CPU build runs tensor parallel over core groups: the same head rule as on GPUs
    result = _plan("qwen2.5-0.5b", "auto", "", 1, "vllm", {"tensor_parallel_size": 2})
    assert (result.strategy, result.tensor_parallel_size) == (Strategy.TENSOR_PARALLEL, 2)
    with pytest.raises(UserError, match="tensor_parallel_size=3 must divide num_attention_heads=14"):
        _plan("qwen2.5-0.5b", "auto", "", 1, "vllm", {"tensor_parallel_size": 3})
    with pytest.raises(UserError, match="needs 64 CPU cores"):
        _plan("qwen2.5-0.5b", "auto", "", 1, "vllm", {"data_parallel_size": 64})
