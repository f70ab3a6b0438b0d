"""Pure parts of vllm_ext: config parsing, request splitting and packing, backoff,
echo parsing. No vLLM needed; every refused input is checked for its message."""

from __future__ import annotations

import random

import pytest

from lm_eval_ext.errors import ConfigError
from lm_eval_ext.vllm.config import VllmExtConfig
from lm_eval_ext.vllm.replicas import split_by_tokens
from lm_eval_ext.vllm.server_client import backoff_delay_s, pack_by_tokens, parse_echo_logprobs



def config(**args) -> VllmExtConfig:
    return VllmExtConfig.from_model_args({"pretrained": "m", **args})


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
        ({"base_url": "http://127.0.0.1:8000/v1", "pipeline_parallel_size": 2}, "vllm serve --pipeline-parallel-size 2"),
        ({"distributed_executor_backend": "rey"}, "did you mean 'ray'"),
        ({"score_with_prefix_cache": True, "enable_prefix_caching": False}, "needs enable_prefix_caching=true"),
        ({"score_with_prefix_cache": True, "base_url": "http://127.0.0.1:8000/v1"}, "not available with base_url"),
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


def test_a_group_goes_back_to_the_replica_that_holds_its_blocks():
    """Probes and warm-ups of a group in a later call land where its choices were (its cached blocks)."""
    assert split_by_tokens([9, 1], ["a", "b"], 2, homes={"a": 1}) == [[1], [0]]
    assert split_by_tokens([9, 1], ["a", "b"], 2, homes={"a": 5}) == [[0], [1]]  # a replica that is gone


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


def test_prefix_cache_scoring_is_on_by_default_where_vllm_allows_it():
    assert config().scores_with_prefix_cache
    assert not config(enable_prefix_caching=False).scores_with_prefix_cache
    assert not config(base_url="http://127.0.0.1:8000/v1").scores_with_prefix_cache
    assert not config(score_with_prefix_cache=False).scores_with_prefix_cache
