"""The engine gets every request of a call at once (not lm-eval's ``batch_size`` chunks), with
stock's results and order; ``max_batch_tokens=off`` keeps stock's batch size: batches of
``batch_size`` requests (was: HFLM's loops called the engine once per chunk; now hf/requests.py
calls it once per call, and off caps the batches instead; generation keeps ``batch_size`` rows live
in its continuous loop)."""

from __future__ import annotations

import pytest
from tests.adapters.conftest import TASKS_DIR

from lm_eval_ext.hf.adapter import HfExtLM


def evaluate(lm, task: str, limit: int) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(TASKS_DIR)], include_defaults=False)
    out = simple_evaluate(model=lm, tasks=[task], task_manager=manager, log_samples=True, limit=limit,
                          verbosity="WARNING")
    return {s["doc_id"]: s["resps"] for s in out["samples"][task]}


def count_calls(lm, monkeypatch) -> list:
    """(kind, requests) per engine call, and (kind + "-batch", requests) per batch it ran."""
    calls = []
    generate, score = lm.engine.generate, lm.engine.score
    generate_batch, score_batch = lm.engine.generate_batch, lm.engine.score_batch

    def counted_generate(call, requests, **kwargs):
        calls.append(("generate", len(requests)))
        return generate(call, requests, **kwargs)

    def counted_score(call, requests, **kwargs):
        calls.append(("score", len(requests)))
        return score(call, requests, **kwargs)

    def counted_generate_batch(batch):
        calls.append(("generate-batch", len(batch)))
        return generate_batch(batch)

    def counted_score_batch(batch):
        calls.append(("score-batch", batch.num_requests))
        return score_batch(batch)

    monkeypatch.setattr(lm.engine, "generate", counted_generate)
    monkeypatch.setattr(lm.engine, "score", counted_score)
    monkeypatch.setattr(lm.engine, "generate_batch", counted_generate_batch)
    monkeypatch.setattr(lm.engine, "score_batch", counted_score_batch)
    return calls


@pytest.mark.parametrize("task, kind", [("ext_copy_gen", "generate"), ("ext_prose_rolling", "score")])
def test_one_engine_call_per_request_type_by_default(tiny_model_path, monkeypatch, task, kind):
    from lm_eval.models.huggingface import HFLM

    limit = 6
    stock = evaluate(HFLM(pretrained=tiny_model_path, batch_size=2, device="cpu", dtype="float32"), task, limit)
    ext = HfExtLM(pretrained=tiny_model_path, device="cpu", dtype="float32", cache="off")  # batch_size=1
    calls = count_calls(ext, monkeypatch)
    got = evaluate(ext, task, limit)
    assert [c for c in calls if c[0] == kind] == [(kind, max(n for k, n in calls if k == kind))] and calls[0][1] >= limit
    if kind == "generate":
        assert got == stock  # identical greedy generations, same order
    else:
        for doc, want in stock.items():
            assert got[doc][0][0] == pytest.approx(want[0][0], rel=1e-6)
    assert ext.batch_size == 1  # restored after each call

    off = HfExtLM(pretrained=tiny_model_path, device="cpu", dtype="float32", cache="off", max_batch_tokens="off")
    off_calls = count_calls(off, monkeypatch)
    evaluate(off, task, limit)
    assert len([c for c in off_calls if c[0] == kind]) == 1
    if kind == "generate":  # the continuous loop keeps batch_size rows live: one here
        entry = off.engine.cost_report.as_dict()[f"{task}/generate_until"]
        assert entry["mean_live_rows"] == 1.0 and entry["num_requests"] == limit
    else:
        batches = [n for k, n in off_calls if k == f"{kind}-batch"]
        assert all(n == 1 for n in batches) and len(batches) >= limit
