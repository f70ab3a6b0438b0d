"""The vLLM build description (lm_eval_ext.vllm.build): planner sizes -> engine arguments and
pinning per replica. Pure: fixture config.json files and described hardware, no vLLM."""

from __future__ import annotations

import re

import pytest
from tests.unit.planner_fixtures import facts

from lm_eval_ext.errors import ConfigError, UserError
from lm_eval_ext.plan.hardware import describe_hardware
from lm_eval_ext.plan.launch import Launch
from lm_eval_ext.vllm.build import describe_vllm_build, replica_pinning, vllm_request
from lm_eval_ext.vllm.config import VllmExtConfig


def config(**args) -> VllmExtConfig:
    return VllmExtConfig.from_model_args({"pretrained": "m", **args})


def build(name, gpus, nodes=1, **args):
    return describe_vllm_build(facts(name), describe_hardware(gpus, num_nodes=nodes), config(**args))


def test_auto_sizes_come_from_memory_and_each_replica_gets_its_gpus():
    result = build("llama-3-70b", "8x80GiB")
    assert (result.sizes.tensor_parallel_size, result.sizes.data_parallel_size) == (4, 2)
    assert [r.env for r in result.replicas] == [{"CUDA_VISIBLE_DEVICES": "0,1,2,3"},
                                                {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}]
    args = result.replicas[0].engine_args
    assert (args["tensor_parallel_size"], args["pipeline_parallel_size"], args["max_model_len"],
            args["gpu_memory_utilization"]) == (4, 1, 8192, 0.9)
    assert "distributed_executor_backend" not in args  # one node: vLLM's own executor
    assert result.mode == "data_parallel" and result.plan.reasons == result.sizes.reasons


def test_explicit_size_constrains_the_others():
    result = build("llama-3-8b", "8x80GiB", tensor_parallel_size=2)
    assert (result.sizes.tensor_parallel_size, result.sizes.data_parallel_size) == (2, 4)
    assert result.replicas[3].env == {"CUDA_VISIBLE_DEVICES": "6,7"}


def test_visible_devices_of_the_launch_are_sliced():
    hardware = describe_hardware("2x80GiB")
    from dataclasses import replace

    hardware = replace(hardware, launch=Launch.resolve(cuda_visible_devices="5,7"))
    result = describe_vllm_build(facts("qwen2.5-0.5b"), hardware, config())
    assert [r.env for r in result.replicas] == [{"CUDA_VISIBLE_DEVICES": "5"}, {"CUDA_VISIBLE_DEVICES": "7"}]


def test_a_model_larger_than_a_node_runs_pipeline_stages_on_ray():
    result = build("llama-3-70b", "4x40GiB", nodes=2)
    assert (result.sizes.tensor_parallel_size, result.sizes.pipeline_parallel_size) == (4, 2)
    (replica,) = result.replicas
    assert replica.node is None and replica.env == {}  # Ray places the stages
    assert replica.engine_args["distributed_executor_backend"] == "ray"
    with pytest.raises(ConfigError, match="distributed_executor_backend=mp cannot run one replica over 2 nodes; "
                                          "use distributed_executor_backend=ray"):
        build("llama-3-70b", "4x40GiB", nodes=2, distributed_executor_backend="mp")


def test_data_parallel_over_two_nodes_names_each_replicas_node():
    result = build("llama-3-70b", "8x80GiB", nodes=2)
    assert [r.node for r in result.replicas] == [0, 0, 1, 1]
    assert result.replicas[2].env == {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}


def test_cpu_auto_is_one_engine_and_explicit_tensor_parallel_splits_the_cores():
    one = describe_vllm_build(facts("qwen2.5-0.5b"), describe_hardware(""), config(), cpu_cores=[0, 1])
    assert (one.sizes.tensor_parallel_size, one.sizes.data_parallel_size, one.replicas[0].env) == (1, 1, {})
    two = describe_vllm_build(facts("qwen2.5-0.5b"), describe_hardware(""), config(tensor_parallel_size=2),
                              cpu_cores=[0, 1])
    assert two.replicas[0].env == {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    dp = describe_vllm_build(facts("qwen2.5-0.5b"), describe_hardware(""), config(data_parallel_size=2),
                             cpu_cores=[0, 1])
    assert [r.env for r in dp.replicas] == [{"VLLM_CPU_OMP_THREADS_BIND": "0"}, {"VLLM_CPU_OMP_THREADS_BIND": "1"}]


@pytest.mark.parametrize(("args", "gpus", "message"), [
    ({"tensor_parallel_size": 3}, "8x80GiB", "tensor_parallel_size=3 must divide num_attention_heads=64; use 1, 2, 4, 8"),
    ({"tensor_parallel_size": 2, "data_parallel_size": 5}, "8x80GiB", "data_parallel_size=5 needs 10 GPUs"),
    ({"max_model_len": 100000}, "8x80GiB", "max_model_len=100000 exceeds the model's window of 8192"),
    ({"tensor_parallel_size": 64}, "", "tensor_parallel_size=64 exceeds the 32 CPU core(s) of a node"),
])
def test_impossible_sizes_are_refused_with_the_fix(args, gpus, message):
    with pytest.raises(UserError, match=re.escape(message)):
        build("llama-3-70b", gpus, **args)


def test_request_mapping():
    request = vllm_request(config(max_length=512, gpu_memory_utilization=0.8, pipeline_parallel_size=2))
    assert (request.backend, request.max_model_len, request.gpu_memory_utilization) == ("vllm", 512, 0.8)
    assert (request.tensor_parallel_size, request.pipeline_parallel_size) == (None, 2)


def test_replica_pinning_gives_each_replica_its_own_devices():
    assert replica_pinning(1, 2, 0, [0, 1, 2, 3], 2) == {"VLLM_CPU_OMP_THREADS_BIND": "2|3"}
    assert replica_pinning(0, 1, 0, [0, 1], 2) == {"VLLM_CPU_OMP_THREADS_BIND": "0"}
    assert replica_pinning(1, 2, 4, [], 2) == {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert replica_pinning(1, 1, 2, [], 2, visible_gpus=["5", "7"]) == {"CUDA_VISIBLE_DEVICES": "7"}


def cpu_args(**args) -> dict:
    built = describe_vllm_build(facts("qwen2.5-0.5b"), describe_hardware(""), config(**args), cpu_cores=[0, 1])
    return built.replicas[0].engine_args


def test_kv_block_is_32_on_cpu_while_scoring_through_the_prefix_cache_else_vllms_own():
    from lm_eval_ext.vllm.build import CPU_SCORING_BLOCK_TOKENS

    assert cpu_args()["block_size"] == CPU_SCORING_BLOCK_TOKENS == 32
    assert "block_size" not in cpu_args(score_with_prefix_cache="false")
    assert "block_size" not in cpu_args(enable_prefix_caching="false")
    assert cpu_args(block_size="64")["block_size"] == 64
    assert "block_size" not in build("llama-3-8b", "8x80GiB").replicas[0].engine_args  # GPUs: vLLM's 16
    assert build("llama-3-8b", "8x80GiB", block_size=32).replicas[0].engine_args["block_size"] == 32
