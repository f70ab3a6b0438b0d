"""vllm_ext's side of issue 25 on real vLLM: ``plan --tasks`` counts its work without starting an engine,
a run records the same count with its measured seconds (``estimate_vs_actual``), and the next run of
the model starts from the history the first one left."""

from __future__ import annotations

import pytest

from tests.vllm.evaluation import evaluate_samples
from tests.vllm.support import ENGINE_ARGS, requires_vllm

pytestmark = [pytest.mark.vllm, requires_vllm]
TASKS = ["ext_arith_mc", "ext_copy_gen", "ext_prose_rolling"]
LIMIT = 4


def test_the_count_needs_no_engine_and_equals_what_a_run_counts(tiny_vllm_model_path, task_manager, tmp_path,
                                                               monkeypatch):
    from lm_eval_ext.bill.count import WorkCounter
    from lm_eval_ext.bill.workload import record_workload
    from lm_eval_ext.vllm.adapter import VllmExtLM

    monkeypatch.setenv("LM_EVAL_EXT_CACHE_DIR", str(tmp_path))
    args = {"pretrained": tiny_vllm_model_path, "cache": "off", **{k: str(v) for k, v in ENGINE_ARGS.items()}}
    counter = WorkCounter("vllm", args)
    counted = counter.count(record_workload(TASKS, limit=LIMIT))
    assert not counter.lm.engine_started
    arith = counted.counts[("ext_arith_mc", "loglikelihood")]
    assert 0 < arith.computed_tokens <= arith.stock_tokens

    runs, reports = [], []
    for _ in range(2):
        lm = VllmExtLM(pretrained=tiny_vllm_model_path, cache="off", **ENGINE_ARGS)
        try:
            evaluate_samples(lm, task_manager, limit=LIMIT)
            info = lm.get_model_info()
            runs.append(info["estimate_vs_actual"])
            reports.append(info["cost_report"])
        finally:
            lm.close()
    first, second = runs
    # the count models the scorer: what the engine computed (vLLM's num_cached_tokens) is what was counted
    for task, kind in (("ext_arith_mc", "loglikelihood"), ("ext_prose_rolling", "loglikelihood_rolling")):
        assert reports[0][f"{task}/{kind}"]["tokens_computed"] == round(counted.counts[(task, kind)].computed_tokens)
    for (task, kind), count in counted.counts.items():
        if kind != "generate_until":  # generation: the run expects half the budget, the plan the reference
            assert first[f"{task}/{kind}"]["estimated_tokens"] == pytest.approx(count.computed_tokens, abs=0.1)
        assert first[f"{task}/{kind}"]["actual_s"] > 0
    assert all(entry["source"] is None for entry in first.values())  # no history yet: tokens only
    assert all(entry["source"] == "history" and entry["estimated_s"] > 0 for entry in second.values())
