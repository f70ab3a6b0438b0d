"""Pure parts of vllm_ext: config parsing, size choice, request splitting and packing, backoff,
echo parsing. No vLLM needed; every refused input is checked for its message."""

from __future__ import annotations

import random

import pytest

from lm_eval_ext.errors import ConfigError
from lm_eval_ext.vllm.config import VllmExtConfig
from lm_eval_ext.vllm.replicas import replica_pinning, split_by_tokens
from lm_eval_ext.vllm.server_client import backoff_delay_s, pack_by_tokens, parse_echo_logprobs
from lm_eval_ext.vllm.sizes import HardwareView, ModelShape, choose_vllm_sizes

LLAMA_SHAPE = ModelShape(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
TWO_CORES = HardwareView(num_gpus=0, num_cpu_cores=2)
FOUR_GPUS = HardwareView(num_gpus=4, num_cpu_cores=32)


def config(**args) -> VllmExtConfig:
    return VllmExtConfig.from_model_args({"pretrained": "m", **args})


def test_auto_sizes_on_cpu_are_one_replica_tp1():
    sizes = choose_vllm_sizes(config(), LLAMA_SHAPE, TWO_CORES)
    assert (sizes.tensor_parallel_size, sizes.data_parallel_size, sizes.max_model_len) == (1, 1, None)
    assert any("CPU" in reason for reason in sizes.reasons)


def test_explicit_sizes_win_over_the_planner():
    def planner(cfg, shape, hardware):
        return 4, 1, "planner says TP 4"

    sizes = choose_vllm_sizes(config(data_parallel_size="2", tensor_parallel_size=2), LLAMA_SHAPE, FOUR_GPUS, planner)
    assert (sizes.tensor_parallel_size, sizes.data_parallel_size) == (2, 2)
    auto_tp = choose_vllm_sizes(config(data_parallel_size=1), LLAMA_SHAPE, FOUR_GPUS, planner)
    assert (auto_tp.tensor_parallel_size, auto_tp.data_parallel_size) == (4, 1)


@pytest.mark.parametrize(
    ("args", "hardware", "message"),
    [
        ({"tensor_parallel_size": 3}, FOUR_GPUS, "tensor_parallel_size=3 must divide num_attention_heads=4; use one of 1, 2, 4"),
        ({"tensor_parallel_size": 2, "data_parallel_size": 3}, FOUR_GPUS, "needs 6 GPUs but 4 are visible"),
        ({"data_parallel_size": 4}, TWO_CORES, "needs 4 CPU cores (one per rank) but 2 are available"),
        ({"max_model_len": 4096}, TWO_CORES, "max_model_len=4096 exceeds the model's max_position_embeddings=1024; use max_model_len=1024"),
    ],
)
def test_impossible_sizes_are_refused_with_the_fix(args, hardware, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        choose_vllm_sizes(config(**args), LLAMA_SHAPE, hardware)


def test_tensor_parallel_must_fit_kv_heads():
    shape = ModelShape(num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=None)
    with pytest.raises(ConfigError, match="tensor_parallel_size=6 and num_key_value_heads=4"):
        choose_vllm_sizes(config(tensor_parallel_size=6), shape, HardwareView(num_gpus=8, num_cpu_cores=8))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"tensor_parallel_size": "two"}, "tensor_parallel_size='two' must be an integer"),
        ({"data_parallel_size": 0}, "data_parallel_size=0 must be at least 1"),
        ({"gpu_memory_utilization": "1.5"}, r"gpu_memory_utilization=1.5 must be in \(0, 1\]"),
        ({"gpu_memory_utilization": "lots"}, "gpu_memory_utilization='lots' must be a number"),
        ({"max_length": 64, "max_model_len": 64}, "keep only max_model_len"),
        ({"base_url": "127.0.0.1:8000/v1"}, "must start with http:// or https://"),
        ({"base_url": "http://127.0.0.1:8000/v1", "tensor_parallel_size": 2}, "vllm serve --tensor-parallel-size 2"),
        ({"tensor_paralel_size": 2}, "did you mean 'tensor_parallel_size'"),
        ({"dtype": "float64"}, "dtype='float64' is not valid; use one of: auto, float16, bfloat16, float32"),
        ({"timeout_s": 0}, "timeout_s=0.0 must be positive"),
        ({"enable_thinking": True}, "needs think_end_token"),
    ],
)
def test_bad_model_args_are_refused_by_name(args, message):
    with pytest.raises(ConfigError, match=message):
        config(**args)


def test_max_length_is_the_stock_spelling_of_max_model_len():
    assert config(max_length="512").requested_max_model_len == 512
    assert config(max_model_len="auto").requested_max_model_len == "auto"


def test_split_by_tokens_balances_and_keeps_groups_together():
    assert split_by_tokens([5, 3, 3, 1], None, 2) == [[0, 3], [1, 2]]
    shards = split_by_tokens([4, 4, 4, 1, 1, 1], ["a", "a", "a", "b", "c", "d"], 2)
    assert [0, 1, 2] in shards and sorted(sum(shards, [])) == list(range(6))
    assert split_by_tokens([7], None, 3) == [[0], [], []]


def test_replica_pinning_gives_each_replica_its_own_devices():
    assert replica_pinning(1, 2, 0, [0, 1, 2, 3], 2) == {"VLLM_CPU_OMP_THREADS_BIND": "2|3"}
    assert replica_pinning(0, 1, 0, [0, 1], 2) == {"VLLM_CPU_OMP_THREADS_BIND": "0"}
    assert replica_pinning(1, 2, 4, [], 2) == {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert replica_pinning(1, 1, 2, [], 2, visible_gpus=["5", "7"]) == {"CUDA_VISIBLE_DEVICES": "7"}


def test_pack_by_tokens_respects_budget_and_parameters():
    prompts = [[1] * 3, [1] * 3, [1] * 3, [1] * 9, [1] * 2]
    keys = ["ll", "ll", "ll", "ll", "gen"]
    assert pack_by_tokens(prompts, keys, 6) == [[0, 1], [2], [3], [4]]


def test_backoff_doubles_with_jitter_and_is_capped():
    rng = random.Random(0)
    delays = [backoff_delay_s(attempt, 1.0, 60.0, rng) for attempt in range(4)]
    for attempt, delay in enumerate(delays):
        assert 0.5 * 2**attempt <= delay < 1.5 * 2**attempt
    assert 2.5 <= backoff_delay_s(20, 1.0, 5.0, rng) < 7.5
    assert len({round(backoff_delay_s(3, 1.0, 60.0, rng), 6) for _ in range(5)}) == 5  # jittered


def test_echo_logprobs_become_prompt_logprobs_by_token_id():
    choice = {"logprobs": {"token_logprobs": [None, -1.5, -0.25, -3.0],
                           "top_logprobs": [None, {"token_id:7": -0.5}, {"token_id:9": -0.25}, {"token_id:1": -1.0}]}}
    output = parse_echo_logprobs([5, 6, 9], choice)
    assert output.prompt_logprobs == [None, {7: -0.5, 6: -1.5}, {9: -0.25}]
