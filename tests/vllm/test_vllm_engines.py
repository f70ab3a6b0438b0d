"""vllm_ext in process (TP 1, TP 2) and with persistent replicas (DP 2) against stock ``vllm``,
all on real vLLM (CPU build) with the tiny model."""

from __future__ import annotations

import os

import pytest

from tests.vllm.support import ENGINE_ARGS, is_running, requires_vllm
from tests.vllm.evaluation import SUITE_LIMIT, differences, evaluate_samples

pytestmark = [pytest.mark.vllm, requires_vllm]



def _run_ext(tiny_vllm_model_path, task_manager, **model_args):
    from lm_eval_ext.vllm.adapter import VllmExtLM

    lm = VllmExtLM(pretrained=tiny_vllm_model_path, **ENGINE_ARGS, **model_args)
    try:
        return lm, evaluate_samples(lm, task_manager)
    finally:
        lm.close()


def test_in_process_tp1_equals_stock_and_builds_what_was_asked(stock_samples, tiny_vllm_model_path, task_manager):
    from lm_eval_ext.vllm.adapter import VllmExtLM

    lm = VllmExtLM(pretrained=tiny_vllm_model_path, max_model_len=1024, **ENGINE_ARGS)
    try:
        built = lm.engine._llm.llm_engine.vllm_config  # read each setting back from the engine
        assert built.parallel_config.tensor_parallel_size == 1 and built.parallel_config.pipeline_parallel_size == 1
        assert built.model_config.max_model_len == 1024 and str(built.model_config.dtype) == "torch.float32"
        assert built.model_config.enforce_eager and built.cache_config.enable_prefix_caching
        samples = evaluate_samples(lm, task_manager)
    finally:
        lm.close()
    assert differences(stock_samples, samples) == []
    info = lm.get_model_info()
    assert info["vllm_mode"] == "in_process" and info["max_model_len"] == 1024
    assert info["vllm_sizes"]["tensor_parallel_size"] == 1 and info["vllm_sizes"]["data_parallel_size"] == 1
    assert info["lm_eval_ext_plan"]["strategy"] == "single" and info["lm_eval_ext_plan"]["device"] == "cpu"
    assert lm.num_engine_starts == 1
    cost = info["cost_report"]  # lm-eval copies get_model_info into the results JSON
    assert set(cost) == {"ext_arith_mc/loglikelihood", "ext_copy_gen/generate_until",
                         "ext_prose_rolling/loglikelihood_rolling"}
    mc = cost["ext_arith_mc/loglikelihood"]  # 5-shot first_n: one few-shot block for every item
    assert mc["num_requests"] == 4 * SUITE_LIMIT and mc["fallbacks"] == {} and mc["block_size"] == 32
    assert mc["tokens_computed"] < mc["stock_tokens"] / 4 and mc["tokens_computed"] <= 1.1 * mc["minimal_tokens"]
    rolling = cost["ext_prose_rolling/loglikelihood_rolling"]  # one-token contexts: nothing to reuse
    assert rolling["tokens_computed"] == rolling["stock_tokens"] == rolling["minimal_tokens"]
    assert cost["ext_copy_gen/generate_until"]["num_requests"] == SUITE_LIMIT


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"tensor_parallel_size": 3}, "tensor_parallel_size=3 must divide num_attention_heads=4; use 1, 2"),
        ({"max_model_len": 4096}, "max_model_len=4096 exceeds the model's window of 1024 tokens"),
        ({"pipeline_parallel_size": 4}, "pipeline_parallel_size=4 exceeds the 2 layers"),
        ({"data_parallel_size": 64}, "needs 64 CPU cores"),
        ({"tensor_parallel": 2}, "did you mean 'tensor_parallel_size'"),
    ],
)
def test_impossible_settings_are_refused_before_any_engine_starts(tiny_vllm_model_path, args, message):
    from lm_eval_ext.vllm.adapter import VllmExtLM
    from lm_eval_ext.errors import UserError
    from lm_eval_ext.vllm.engines import engine_starts_so_far

    before = engine_starts_so_far()
    with pytest.raises(UserError, match=message):
        VllmExtLM(pretrained=tiny_vllm_model_path, **ENGINE_ARGS, **args)
    assert engine_starts_so_far() == before


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="tensor parallel 2 needs 2 CPU cores")
def test_tensor_parallel_2_equals_stock(stock_samples, tiny_vllm_model_path, task_manager):
    lm, samples = _run_ext(tiny_vllm_model_path, task_manager, tensor_parallel_size=2)
    assert differences(stock_samples, samples) == []
    assert lm.get_model_info()["vllm_sizes"]["tensor_parallel_size"] == 2


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="data parallel 2 needs 2 CPU cores")
def test_data_parallel_2_equals_stock_and_loads_each_replica_once(stock_samples, tiny_vllm_model_path, task_manager):
    from lm_eval_ext.vllm.adapter import VllmExtLM

    lm = VllmExtLM(pretrained=tiny_vllm_model_path, data_parallel_size=2, **ENGINE_ARGS)
    pids = [process.pid for process in lm.engine._processes]
    scratch_dir = lm.engine._scratch_dir
    try:
        samples = evaluate_samples(lm, task_manager)
    finally:
        lm.close()
    assert differences(stock_samples, samples) == []
    # three request types (loglikelihood, generate_until, loglikelihood_rolling) over two replicas:
    # two model loads in all, where stock loads 2 x 3 = 6.
    assert lm.num_engine_starts == 2
    assert lm.get_model_info()["engine_starts"] == 2
    assert len(pids) == 2 and not any(is_running(pid) for pid in pids)
    assert not os.path.exists(scratch_dir)
