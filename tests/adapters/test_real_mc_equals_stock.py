"""hf_ext with its defaults gives stock ``hf``'s per-sample results on real multiple choice:
MMLU 5-shot (``first_n``: every item continues one few-shot head, scored as a family over that
head's cached KV) and ARC-Easy 0-shot (items own their rows), lm-eval's own definitions over
../shared/data (skipped where the data is not). Stock runs in the same test on the tiny model.
Tolerance: loglikelihoods within ``abs_tol=1e-5`` + ``rel_tol=1e-6`` (float32; the prefix's keys
and values come from another forward than stock's, reduced in another order), ``is_greedy`` equal.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.lib import gsm8k, real_tasks

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 12
FOUND = gsm8k.find_data_dir(ROOT)
DATA_DIR = FOUND.parent if FOUND is not None and real_tasks.available(FOUND.parent) else None

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    DATA_DIR is None, reason="real benchmark data not found (../shared/data or $BENCH_DATA_DIR)")]


@pytest.fixture(scope="module")
def include(tmp_path_factory) -> str:
    return str(real_tasks.write_tasks(DATA_DIR, tmp_path_factory.mktemp("real_tasks")))


def samples(lm, task: str, include: str) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[include], include_defaults=False)
    out = simple_evaluate(model=lm, tasks=[task], task_manager=manager, log_samples=True, limit=LIMIT,
                          verbosity="WARNING")
    return {s["doc_id"]: s["resps"] for s in out["samples"][task]}


@pytest.mark.parametrize("task", [real_tasks.mmlu_task("anatomy"), real_tasks.ARC])
def test_defaults_equal_stock_on_real_multiple_choice(task, include, tiny_model_path):
    from lm_eval.models.huggingface import HFLM

    from lm_eval_ext.hf.adapter import HfExtLM

    stock = samples(HFLM(pretrained=tiny_model_path, batch_size=8, device="cpu", dtype="float32"), task, include)
    ext_lm = HfExtLM(pretrained=tiny_model_path, dtype="float32", cache="off")
    ext = samples(ext_lm, task, include)
    assert ext.keys() == stock.keys() and len(ext) == LIMIT
    for doc_id, want in stock.items():
        for (w,), (h,) in zip(want, ext[doc_id], strict=True):
            assert math.isclose(w[0], h[0], rel_tol=1e-6, abs_tol=1e-5), (task, doc_id, w, h)
            assert w[1] == h[1], (task, doc_id, "is_greedy", w, h)
    prefixes = ext_lm.engine.prefixes
    if task.startswith(real_tasks.MMLU_PREFIX):  # one few-shot head, computed once for every item
        assert prefixes.num_computed == 1 and prefixes.computed_tokens > 200
    else:  # 0-shot items share only "Question:"
        assert prefixes.num_computed == 0
