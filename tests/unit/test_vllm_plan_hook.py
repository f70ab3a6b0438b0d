"""The adapter vllm_ext's sizing hook calls: planner sizes from a duck-typed VllmExtConfig."""

from types import SimpleNamespace

import pytest
from tests.unit.planner_fixtures import CONFIGS, facts

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.hardware import describe_hardware
from lm_eval_ext.vllm.plan_hook import vllm_planner, vllm_request


def _config(name, **sizes):
    values = dict(tensor_parallel_size="auto", data_parallel_size="auto", requested_max_model_len="auto",
                  gpu_memory_utilization="auto", dtype="auto", revision=None, trust_remote_code=False)
    values.update(sizes)
    return SimpleNamespace(pretrained=str(CONFIGS / name), **values)


def test_auto_sizes_come_from_memory():
    facts("llama-3-70b")
    tp, dp, reason = vllm_planner(_config("llama-3-70b"), hardware=describe_hardware("8x80GiB"))
    assert (tp, dp) == (4, 2)
    assert reason.startswith("planner: tensor_data_parallel, tensor 4 x data 2; max_model_len 8192")


def test_explicit_size_constrains_the_other():
    facts("llama-3-8b")
    tp, dp, _ = vllm_planner(_config("llama-3-8b", tensor_parallel_size=2), hardware=describe_hardware("8x80GiB"))
    assert (tp, dp) == (2, 4)


def test_request_mapping_and_refusal():
    request = vllm_request(_config("gpt2", requested_max_model_len=512, gpu_memory_utilization=0.8))
    assert (request.backend, request.max_model_len, request.gpu_memory_utilization) == ("vllm", 512, 0.8)
    assert request.tensor_parallel_size is None
    facts("falcon-7b")
    with pytest.raises(UserError, match="tensor_parallel_size=2 must divide num_attention_heads=71"):
        vllm_planner(_config("falcon-7b", tensor_parallel_size=2), hardware=describe_hardware("4x24GiB"))


def test_cpu_only_keeps_one_replica():
    assert vllm_planner(_config("gpt2"), hardware=describe_hardware(""))[:2] == (1, 1)
