"""Multiple choice through vLLM's prefix cache (score_with_prefix_cache): per-sample equal to stock
``vllm``, in the same test, on real tasks; the probe that repairs a context ending on a KV block
boundary; the cost report's computed tokens against vLLM's own scheduled tokens; fallbacks counted with
their cause; two replicas computing what one engine does; warm-ups where the runner is vLLM's own."""

from __future__ import annotations

import os

import pytest

from lm_eval_ext.vllm.build import CPU_SCORING_BLOCK_TOKENS
from tests.vllm.evaluation import LOGLIKELIHOOD_TOLERANCE, differences
from tests.vllm.support import ENGINE_ARGS, ROOT, requires_vllm, scheduled_tokens

pytestmark = [pytest.mark.vllm, requires_vllm]


def _stock_and_ext(model_path, run, *, stock=None, with_ext=True, probes=True, monkeypatch=None, **ext_args):
    """``run(lm)`` with stock ``vllm`` (prefix cache skipped for prompt logprobs, as shipped; or
    ``stock``, its results from before), then with ``vllm_ext`` (``probes=False``: no probe repairs)."""
    from lm_eval.models.vllm_causallms import VLLM

    from lm_eval_ext.vllm import scoring
    from lm_eval_ext.vllm.adapter import VllmExtLM

    expected = stock
    if expected is None:
        stock_lm = VLLM(pretrained=model_path, **ENGINE_ARGS)
        try:
            with scheduled_tokens.counting("stock"):
                expected = run(stock_lm)
        finally:
            stock_lm.model.llm_engine.engine_core.shutdown()
            del stock_lm.model
    if not with_ext:
        return expected, None, None
    if not probes:
        monkeypatch.setattr(scoring, "probe_lengths", lambda *args: [])
    ext = VllmExtLM(pretrained=model_path, cache="off", **ENGINE_ARGS, **ext_args)
    try:
        with scheduled_tokens.counting("ext"):
            return expected, run(ext), ext
    finally:
        ext.close()


def _boundary_requests(lm):
    """Three choices of a context ``longer`` (2 whole blocks + 9 tokens), then, in a second call, three
    choices of its first two blocks alone: a context ending on a block boundary that the first call
    left in the prefix cache whole (its last position predicts the first continuation token)."""
    block = CPU_SCORING_BLOCK_TOKENS  # vllm_ext's KV block on CPU (read back below)
    longer = list(range(5, 5 + 2 * block + 9))
    first = [((None, None), longer, [40 + i, 41 + i]) for i in range(3)]
    on_boundary = [((None, None), longer[: 2 * block], [50 + i, 51 + i]) for i in range(3)]
    return lm._loglikelihood_tokens(first) + lm._loglikelihood_tokens(on_boundary)


def _assert_equal(expected, got):
    for (want, want_greedy), (have, have_greedy) in zip(expected, got, strict=True):
        assert abs(want - have) <= LOGLIKELIHOOD_TOLERANCE and want_greedy == have_greedy


@pytest.fixture(scope="module")
def boundary_stock(tiny_vllm_model_path):
    """Stock ``vllm``'s answers to :func:`_boundary_requests`, and the tokens its scheduler scheduled."""
    with scheduled_tokens() as scheduled:
        expected, _, _ = _stock_and_ext(tiny_vllm_model_path, _boundary_requests, with_ext=False)
    return expected, scheduled["stock"]


def test_context_on_a_block_boundary_is_repaired_by_one_probe(tiny_vllm_model_path, boundary_stock):
    """The second call's choices read both blocks (the first continuation token's logprob was never
    computed); one probe, the context alone (its second block computed), gives that logprob to all
    three. Equal to stock, nothing scored again, and every token the cost report says was computed is
    a token vLLM's scheduler scheduled."""
    block_sizes = []

    def run(lm):
        if hasattr(lm, "ext_config"):
            block_sizes.append(lm.engine._llm.llm_engine.vllm_config.cache_config.block_size)
        return _boundary_requests(lm)

    with scheduled_tokens() as scheduled:
        expected, got, ext = _stock_and_ext(tiny_vllm_model_path, run, stock=boundary_stock[0])
    assert block_sizes == [CPU_SCORING_BLOCK_TOKENS]
    _assert_equal(expected, got)
    report = ext.cost_report.as_dict()["unknown/loglikelihood"]
    assert report["probe_requests"] == 1 and report["probe_tokens"] == CPU_SCORING_BLOCK_TOKENS
    assert report["fallbacks"] == {} and report["num_requests"] == 6
    assert report["tokens_computed"] == scheduled["ext"]
    assert report["stock_tokens"] == boundary_stock[1]  # what stock's scheduler scheduled: every prompt token
    # the first call computes its context once (two of its choices read 2 blocks), the second none of it
    assert report["cached_tokens"] == 2 * 2 * CPU_SCORING_BLOCK_TOKENS + 3 * 2 * CPU_SCORING_BLOCK_TOKENS + (
        CPU_SCORING_BLOCK_TOKENS)


def test_a_fallback_is_counted_with_its_cause(tiny_vllm_model_path, boundary_stock, monkeypatch):
    """Without probes the boundary choices are scored again the stock way (cause
    ``continuation_cached``); with the prefix cache off every request with a reusable block is
    scored the stock way (cause ``prefix_cache_off``). Both equal stock."""
    from lm_eval_ext.vllm import scoring

    expected, got, ext = _stock_and_ext(tiny_vllm_model_path, _boundary_requests, stock=boundary_stock[0],
                                        probes=False, monkeypatch=monkeypatch)
    _assert_equal(expected, got)
    assert ext.cost_report.as_dict()["unknown/loglikelihood"]["fallbacks"] == {scoring.CONTINUATION_CACHED: 3}
    _, got_off, off = _stock_and_ext(tiny_vllm_model_path, _boundary_requests, stock=expected,
                                     score_with_prefix_cache=False, block_size=CPU_SCORING_BLOCK_TOKENS)
    _assert_equal(expected, got_off)
    entry = off.cost_report.as_dict()["unknown/loglikelihood"]
    assert entry["fallbacks"] == {scoring.CACHE_OFF: 6} and entry["cached_tokens"] == 0


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


def _items(num_items: int = 6, context_tokens: int = 100):
    """Items of 4 two-token choices with distinct first tokens after distinct contexts of 3 whole
    reusable blocks and 3 tokens (no choice can read past its context's end)."""
    requests = []
    for item in range(num_items):
        context = [(7 * item + position) % 500 + 2 for position in range(context_tokens)]
        requests += [((None, None), context, [100 + choice, 200 + item]) for choice in range(4)]
    return requests


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="data parallel 2 needs 2 CPU cores")
def test_data_parallel_2_keeps_an_item_on_one_replica_and_its_context_computed_once(tiny_vllm_model_path):
    """Two persistent replicas: every item's choices on one replica (both replicas get items), each
    context computed once there, so the cost report equals one engine's, request for request."""
    from lm_eval_ext.vllm.adapter import VllmExtLM

    reports, answers, homes = [], [], []
    for args in ({}, {"data_parallel_size": 2}):
        lm = VllmExtLM(pretrained=tiny_vllm_model_path, cache="off", **ENGINE_ARGS, **args)
        try:
            answers.append(lm._loglikelihood_tokens(_items()))
            homes.append(getattr(lm.engine, "_last_homes", {}))
        finally:
            lm.close()
        reports.append(lm.cost_report.as_dict()["unknown/loglikelihood"])
    _assert_equal(*answers)
    reused = 6 * 3 * (3 * CPU_SCORING_BLOCK_TOKENS)  # 3 choices per item read its 3 whole blocks
    for report in reports:
        assert report["cached_tokens"] == reused and report["tokens_computed"] == report["minimal_tokens"]
        assert report["probe_requests"] == 0 and report["fallbacks"] == {}
    assert sorted(set(homes[1].values())) == [0, 1] and len(homes[1]) == 6


def test_an_engine_computing_every_prompt_logprob_warms_contexts_first(tiny_vllm_model_path, monkeypatch):
    """Where the runner patch is not installed (another vLLM), the first choice would run the LM head
    over its whole context: the cost model warms each context's whole blocks first, in one engine
    call, and the answers equal the patched engine's."""
    from lm_eval_ext.vllm import prompt_logprobs
    from lm_eval_ext.vllm.adapter import VllmExtLM

    answers, reports = [], []
    for patched in (True, False):
        if not patched:
            monkeypatch.setattr(prompt_logprobs, "install", lambda llm: False)
        lm = VllmExtLM(pretrained=tiny_vllm_model_path, cache="off", **ENGINE_ARGS)
        try:
            assert lm.engine.scores_from_start is patched
            answers.append(lm._loglikelihood_tokens(_items()))
        finally:
            lm.close()
        reports.append(lm.cost_report.as_dict()["unknown/loglikelihood"])
    _assert_equal(*answers)
    assert reports[0]["warmup_requests"] == 0 and "warmup" not in reports[0]["phase_wall_s"]
    assert reports[1]["warmup_requests"] == 6 and reports[1]["warmup_tokens"] == 6 * 3 * CPU_SCORING_BLOCK_TOKENS
    assert reports[1]["tokens_computed"] == reports[0]["tokens_computed"]  # the same tokens, fewer head rows
