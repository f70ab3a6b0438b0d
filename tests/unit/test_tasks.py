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


class _PerfectLM:
    """Answers every request of the shipped tasks as a perfect model would: the reference text for
    generation, the gold choice as the only greedy and likely continuation, log-probability 0 for
    rolling text. It finds each request's document by the prompt's ending."""

    def __init__(self, tasks):
        self.docs = [(task, doc) for task in tasks.values() for doc in task.test_docs()]

    def _doc(self, context: str):
        found = [(t, d) for t, d in self.docs if t.OUTPUT_TYPE != "loglikelihood_rolling"
                 and context.endswith(t.doc_to_text(d))]
        assert len(found) == 1, context[-200:]
        return found[0]

    def answer(self, instance):
        if instance.request_type == "loglikelihood_rolling":
            return 0.0
        task, doc = self._doc(instance.args[0])
        if instance.request_type == "generate_until":
            return task.config.target_delimiter + str(task.doc_to_target(doc)) + "\n"
        gold = task.doc_to_choice(doc)[task.doc_to_target(doc)]
        is_gold = instance.args[1] == task.config.target_delimiter + gold
        return (0.0, True) if is_gold else (-50.0, False)


def test_a_perfect_answer_scores_1_on_every_shipped_task(task_manager):
    """ext_copy_gen once scored 0 for a model that copied perfectly (its reference had a leading
    space that the prediction filter strips); each metric must reach its best value."""
    import lm_eval
    from lm_eval.api.model import LM

    tasks = task_manager.load_task_or_group(["ext_arith_mc", "ext_copy_gen", "ext_prose_rolling"])
    perfect = _PerfectLM(tasks)

    class Model(LM):
        def loglikelihood(self, requests, disable_tqdm=False):
            return [perfect.answer(r) for r in requests]

        loglikelihood_rolling = generate_until = loglikelihood

    results = lm_eval.simple_evaluate(model=Model(), tasks=["ext_suite"], task_manager=task_manager,
                                      limit=8)["results"]
    assert results["ext_copy_gen"]["exact_match,strip"] == 1.0
    assert results["ext_arith_mc"]["acc,none"] == 1.0 and results["ext_arith_mc"]["acc_norm,none"] == 1.0
    assert results["ext_prose_rolling"]["word_perplexity,none"] == 1.0
    assert results["ext_prose_rolling"]["bits_per_byte,none"] == 0.0
