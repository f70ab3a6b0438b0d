"""Multiple choice through vLLM's prefix cache (score_with_prefix_cache): per-sample equal to stock
``vllm``, in the same test, on real tasks; and the fallback for a context ending on a KV block boundary."""

from __future__ import annotations

import logging

import pytest

from tests.vllm.evaluation import LOGLIKELIHOOD_TOLERANCE, differences
from tests.vllm.support import ENGINE_ARGS, ROOT, requires_vllm

pytestmark = [pytest.mark.vllm, requires_vllm]


def _stock_and_ext(model_path, run, **ext_args):
    """``run(lm)`` with stock ``vllm`` (prefix cache skipped for prompt logprobs, as shipped), then
    with ``vllm_ext`` scoring through the prefix cache."""
    from lm_eval.models.vllm_causallms import VLLM

    from lm_eval_ext.vllm.adapter import VllmExtLM

    stock = VLLM(pretrained=model_path, **ENGINE_ARGS)
    try:
        expected = run(stock)
    finally:
        stock.model.llm_engine.engine_core.shutdown()
        del stock.model
    ext = VllmExtLM(pretrained=model_path, cache="off", score_with_prefix_cache=True, **ENGINE_ARGS, **ext_args)
    try:
        return expected, run(ext), ext
    finally:
        ext.close()


def test_context_on_a_block_boundary_falls_back_to_stock(tiny_vllm_model_path, caplog):
    """A context of exactly two KV blocks that an earlier call left in the prefix cache (the
    warm-up of a longer context that begins with it) is served whole, so the first continuation
    token's logprob is never computed: those requests must be scored again without the cache
    (and equal stock). Its own warm-up computes one block only (``warm_prompt``)."""
    from lm_eval_ext.vllm.build import CPU_SCORING_BLOCK_TOKENS

    block_sizes = []

    def run(lm):
        block = CPU_SCORING_BLOCK_TOKENS  # vllm_ext's KV block on CPU (read back below)
        if hasattr(lm, "ext_config"):
            block_sizes.append(lm.engine._llm.llm_engine.vllm_config.cache_config.block_size)
        longer = list(range(5, 5 + 2 * block + 9))
        first = [((None, None), longer, [40 + i, 41 + i]) for i in range(3)]
        on_boundary = [((None, None), longer[: 2 * block], [50 + i, 51 + i]) for i in range(3)]
        return lm._loglikelihood_tokens(first) + lm._loglikelihood_tokens(on_boundary)

    with caplog.at_level(logging.INFO, logger="lm_eval_ext.vllm"):
        expected, got, ext = _stock_and_ext(tiny_vllm_model_path, run)
    assert block_sizes == [CPU_SCORING_BLOCK_TOKENS]
    assert "3 request(s) had continuation positions served from the prefix cache" in caplog.text
    for (want, want_greedy), (have, have_greedy) in zip(expected, got, strict=True):
        assert abs(want - have) <= LOGLIKELIHOOD_TOLERANCE and want_greedy == have_greedy


def _real_tasks(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT))
    from benchmarks.lib import real_tasks

    data_root = real_tasks.find_multiple_choice_data(ROOT)
    if data_root is None:
        pytest.skip("../shared/data (ARC-Easy, MMLU) is absent")
    from lm_eval.tasks import TaskManager

    subjects = real_tasks.VLLM_MMLU_SUBJECTS[:2]
    manager = TaskManager(include_path=[str(real_tasks.write_tasks(data_root, tmp_path / "tasks", subjects))],
                          include_defaults=False)
    return manager, [real_tasks.ARC, *(real_tasks.mmlu_task(s) for s in subjects)]


def test_arc_easy_and_mmlu_5shot_equal_stock(tiny_vllm_model_path, tmp_path):
    import lm_eval

    manager, tasks = _real_tasks(tmp_path)

    def run(lm):
        results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, log_samples=True, limit=8,
                                          bootstrap_iters=0, num_fewshot=None)
        return {t: {s["doc_id"]: s["resps"] for s in samples} for t, samples in results["samples"].items()}

    expected, got, _ = _stock_and_ext(tiny_vllm_model_path, run)
    assert set(expected) == set(tasks)
    assert differences(expected, got) == []
