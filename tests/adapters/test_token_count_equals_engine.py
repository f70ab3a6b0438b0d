"""``lm-eval-ext plan --tasks`` counts what ``hf_ext`` then computes: the counted tokens per task and
request type (:mod:`lm_eval_ext.bill.count`, no weights) equal the engine's cost report after a
real run of the same tasks, on the shipped tasks and on lm-eval's own ARC-Easy, MMLU 5-shot,
LAMBADA and WikiText-2 over ../shared/data (skipped where that data is not).

Scoring (loglikelihood, rolling) is compared exactly: the engine attributes each row and each
few-shot prefix to tasks as ``token_count`` does. Generation is not compared here: the engine's
generation is being rewritten as continuous batching, whose prefill and decode tokens
``count_generation`` already counts (see tests/unit/test_token_count.py); its cost report is to be
checked against it when it lands.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.lib import gsm8k, real_tasks

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["ext_arith_mc", "ext_copy_gen", "ext_prose_rolling"]
FOUND = gsm8k.find_data_dir(ROOT)
DATA_DIR = FOUND.parent if FOUND is not None and real_tasks.available(FOUND.parent) else None
REAL = [real_tasks.ARC, real_tasks.mmlu_task("anatomy"), real_tasks.LAMBADA, real_tasks.WIKITEXT]


def run_and_count(model_path: str, tasks: list[str], limit: int, include: list[str]):
    from lm_eval import simple_evaluate

    from lm_eval_ext.bill.count import count_work
    from lm_eval_ext.bill.workload import record_workload, task_manager
    from lm_eval_ext.hf.adapter import HfExtLM

    counted = count_work("hf", {"pretrained": model_path, "cache": "off"},
                         record_workload(tasks, limit=limit, include_paths=include))
    lm = HfExtLM(pretrained=model_path, device="cpu", cache="off", batch_size="auto")
    simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager(tasks, include), limit=limit,
                    verbosity="WARNING")
    return counted, lm.engine.cost_report.entries


def assert_scoring_counts_equal(counted, report) -> None:
    compared = 0
    for (task, kind), count in counted.counts.items():
        if kind == "generate_until":
            continue
        entry = report[(task, kind)]
        assert entry.tokens_computed == pytest.approx(count.computed_tokens, abs=1e-6), (task, kind)
        assert entry.useful_tokens == count.stock_tokens, (task, kind)
        if kind == "loglikelihood":
            assert entry.num_requests == count.num_requests, task
        compared += 1
    assert compared >= 2


def test_counts_equal_the_engine_on_the_shipped_tasks(tiny_model_path):
    counted, report = run_and_count(tiny_model_path, SHIPPED, 12, [])
    assert_scoring_counts_equal(counted, report)
    arith = counted.counts[("ext_arith_mc", "loglikelihood")]
    assert arith.shared_prefix_tokens > 0 and arith.computed_tokens < arith.stock_tokens  # a few-shot family


@pytest.mark.slow
@pytest.mark.skipif(DATA_DIR is None, reason="real benchmark data not found (../shared/data or $BENCH_DATA_DIR)")
def test_counts_equal_the_engine_on_real_tasks(tiny_model_path, tmp_path):
    include = str(real_tasks.write_tasks(DATA_DIR, tmp_path / "tasks", subjects=("anatomy",)))
    counted, report = run_and_count(tiny_model_path, REAL, 6, [include])
    assert_scoring_counts_equal(counted, report)
    mmlu = counted.counts[(real_tasks.mmlu_task("anatomy"), "loglikelihood")]
    assert mmlu.shared_prefix_tokens > 0  # MMLU's first_n few-shot head: one family per subject
