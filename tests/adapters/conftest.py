"""Shared fixtures: the tiny model, stock ``hf`` results computed once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TASKS_DIR = ROOT / "tasks"

TASKS = ["ext_arith_mc", "ext_copy_gen", "ext_prose_rolling"]
#: documents per task: enough for several batches, shared few-shot prefixes and every request type,
#: small enough that the suite stays within its time on a loaded 2-core machine
LIMIT = 16


def evaluate(lm, tasks=TASKS, limit=LIMIT) -> dict:
    """Per-sample responses ``{(task, doc_id): resps}`` and the metrics of one in-process run."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(TASKS_DIR)], include_defaults=False)
    out = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, log_samples=True,
                          limit=limit, verbosity="WARNING")
    samples = {(task, s["doc_id"]): s for task, rows in out["samples"].items() for s in rows}
    return {"samples": samples, "results": out["results"], "config": out["config"]}


@pytest.fixture(scope="session")
def tiny_model_path(tiny_model_path) -> str:
    """The root fixture's model (built if missing), as the str HFLM insists on."""
    return str(tiny_model_path)


@pytest.fixture(scope="session")
def stock_results(tiny_model_path):
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=tiny_model_path, batch_size=8, device="cpu", dtype="float32")
    return evaluate(lm)


@pytest.fixture(scope="session")
def ext_lm(tiny_model_path):
    from lm_eval_ext.hf.adapter import HfExtLM

    # cache off: this one model serves many comparisons, which a request cache would answer itself
    return HfExtLM(pretrained=tiny_model_path, batch_size="auto", device="cpu", cache="off")
