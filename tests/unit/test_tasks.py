"""Every shipped task YAML loads through lm-eval; the committed data equals a fresh generation."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import TASKS_DIR

SHIPPED = sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def test_generated_data_is_committed_and_current():
    sys.path.insert(0, str(TASKS_DIR.parent / "scripts"))
    import make_task_data

    for name, rows in make_task_data.generate().items():
        committed = (TASKS_DIR / "data" / f"{name}.jsonl").read_text()
        assert committed == make_task_data.render(rows), f"tasks/data/{name}.jsonl is stale"


@pytest.mark.parametrize("name", SHIPPED)
def test_task_yaml_loads(task_manager, name):
    loaded = task_manager.load_task_or_group([name])
    assert loaded, name


def test_request_types_are_covered(task_manager):
    tasks = task_manager.load_task_or_group(["ext_arith_mc", "ext_copy_gen", "ext_prose_rolling"])
    kinds = {task.OUTPUT_TYPE for task in tasks.values()}
    assert kinds == {"multiple_choice", "generate_until", "loglikelihood_rolling"}
    mc = tasks["ext_arith_mc"]
    doc = next(iter(mc.test_docs()))
    assert all(len(choice.split()) > 1 or "-" in choice for choice in mc.doc_to_choice(doc))
