"""hf_ext's scoring engine gives stock ``hf``'s per-sample results, whatever the batching.

Stock ``hf`` and ``hf_ext`` run in the same test on the tiny model. Loglikelihoods are compared
with ``abs_tol=1e-5`` plus ``rel_tol=1e-6``: rolling sums reach ~2000 nats, where one float32 ulp
is 1.2e-4, and stock itself moves by that much between batch sizes.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from tests.adapters.conftest import LIMIT, TASKS, evaluate

pytestmark = pytest.mark.slow


def assert_same_samples(expected: dict, got: dict) -> None:
    assert got["samples"] and got["samples"].keys() <= expected["samples"].keys()
    for key, sample in got["samples"].items():
        want, have = expected["samples"][key]["resps"], sample["resps"]
        if key[0] == "ext_copy_gen":
            assert want == have, key
            continue
        for (w,), (h,) in zip(want, have, strict=True):
            w_ll, h_ll = (w, h) if isinstance(w, float) else (w[0], h[0])
            assert math.isclose(w_ll, h_ll, rel_tol=1e-6, abs_tol=1e-5), (key, w, h)
            if not isinstance(w, float):
                assert w[1] == h[1], (key, "is_greedy", w, h)
    for task, metrics in got["results"].items():
        for name, value in expected["results"][task].items():
            if isinstance(value, float) and "stderr" not in name:
                assert math.isclose(value, got["results"][task][name], rel_tol=1e-6), (task, name)


def configure(lm, *, batch_size="auto", max_batch_tokens=None, share=True, row_tokens=512):
    from lm_eval_ext.hf.compute.engine import EngineSettings, ScoringEngine

    lm.batch_size_per_gpu = batch_size
    settings = EngineSettings(max_batch_tokens=max_batch_tokens, share_contexts=share, row_tokens=row_tokens,
                              strategy=lm._layout.strategy_name)
    lm.engine = ScoringEngine(lm, settings, probe_cache=lm.engine.budgets.probe_cache)
    return lm


def test_auto_budget_matches_stock_and_reports_cost(stock_results, ext_lm):
    got = evaluate(configure(ext_lm))
    assert_same_samples(stock_results, got)
    report = got["config"]["cost_report"]
    assert set(report) == {"ext_arith_mc/loglikelihood", "ext_copy_gen/generate_until",
                           "ext_prose_rolling/loglikelihood_rolling"}
    mc = report["ext_arith_mc/loglikelihood"]
    assert mc["num_requests"] == 4 * LIMIT and mc["oom_retries"] == 0
    # shared contexts: far fewer tokens computed than an unshared run would
    assert mc["tokens_computed"] < mc["useful_tokens"] / 4
    assert mc["budget_tokens"] >= 16 and mc["peak_memory_bytes"]["cpu_rss"] > 0


@pytest.mark.parametrize("max_batch_tokens, batch_size, share, row_tokens, tasks", [
    (64, "auto", True, 512, TASKS),  # tiny budget: many batches, rows travel alone
    (2048, 1, True, 128, TASKS),     # explicit budget wins over lm-eval's default batch_size=1
    (None, 3, False, 512, ["ext_arith_mc", "ext_prose_rolling"]),  # stock-like: 3 requests per batch
])
def test_budgets_and_layouts_do_not_change_results(stock_results, ext_lm, max_batch_tokens, batch_size,
                                                   share, row_tokens, tasks):
    lm = configure(ext_lm, batch_size=batch_size, max_batch_tokens=max_batch_tokens, share=share,
                   row_tokens=row_tokens)
    assert_same_samples(stock_results, evaluate(lm, tasks=tasks))


def test_shared_and_unshared_scoring_agree(ext_lm):
    shared = evaluate(configure(ext_lm, max_batch_tokens=1024, share=True), tasks=["ext_arith_mc"])
    unshared = evaluate(configure(ext_lm, max_batch_tokens=1024, share=False), tasks=["ext_arith_mc"])
    assert_same_samples(shared, unshared)
    computed = [r["config"]["cost_report"]["ext_arith_mc/loglikelihood"]["tokens_computed"]
                for r in (shared, unshared)]
    assert computed[0] < computed[1] / 4


def test_fake_out_of_memory_at_random_batches_changes_nothing(stock_results, ext_lm, monkeypatch):
    lm = configure(ext_lm, max_batch_tokens=512)
    rng = random.Random(1234)
    raised = []

    def flaky(real):
        def call(batch, *args):
            size = batch.num_requests if hasattr(batch, "num_requests") else len(batch)
            # the first three multi-request batches always fail: with token budgets the default
            # a run has few batches, so chance alone might not reach them
            if size > 1 and (len(raised) < 3 or rng.random() < 0.4):
                raised.append(size)
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
            return real(batch, *args)
        return call

    monkeypatch.setattr(lm.engine, "score_batch", flaky(lm.engine.score_batch))
    # generation: the continuous loop's forwards of several rows fail the same way (rows wait again)
    from lm_eval_ext.hf.compute.continuous import ContinuousGenerator

    real_forward = ContinuousGenerator._forward

    def flaky_forward(loop, ids, positions, forward):
        if forward.num_rows > 1 and (len(raised) < 4 or rng.random() < 0.2):
            raised.append(forward.num_rows)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        return real_forward(loop, ids, positions, forward)

    monkeypatch.setattr(ContinuousGenerator, "_forward", flaky_forward)
    got = evaluate(lm)
    assert len(raised) >= 3
    assert_same_samples(stock_results, got)
    report = got["config"]["cost_report"]
    assert sum(entry["oom_retries"] for entry in report.values()) == len(raised)
    assert lm.engine.budgets.lowered  # the budget was lowered for the rest of the run


def test_runtime_error_out_of_memory_is_recovered_but_other_errors_propagate(ext_lm, monkeypatch):
    lm = configure(ext_lm, max_batch_tokens=4096)
    real = lm.engine.score_batch
    state = {"first": True}

    def once(batch):
        if state.pop("first", False):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: out of memory")
        return real(batch)

    monkeypatch.setattr(lm.engine, "score_batch", once)
    evaluate(lm, tasks=["ext_arith_mc"], limit=5)
    assert lm.engine.budgets.lowered["loglikelihood"] < 4096

    monkeypatch.setattr(lm.engine, "score_batch", lambda batch: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        evaluate(lm, tasks=["ext_arith_mc"], limit=2)


def test_single_request_that_does_not_fit_is_not_dropped(ext_lm, monkeypatch):
    lm = configure(ext_lm, max_batch_tokens=4096)

    def always(batch):
        raise torch.OutOfMemoryError("CUDA out of memory (fake)")

    monkeypatch.setattr(lm.engine, "score_batch", always)
    with pytest.raises(torch.OutOfMemoryError):
        evaluate(lm, tasks=["ext_arith_mc"], limit=1)
