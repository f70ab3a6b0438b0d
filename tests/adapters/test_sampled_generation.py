"""Sampled generation through lm-eval: each request draws from its own generator, so the same
request gives the same sample at any token budget (pool size) and after a resume from the request
cache; ``repeats`` copies of one request are distinct draws. (Two ranks: tests/dist.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from lm_eval_ext.errors import RunInterrupted

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 6
REPEATS = 3


def sampled_task(folder: Path) -> Path:
    """lm-eval's own schema: the shipped copy task, sampled, each prompt repeated."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ext_copy_sampled.yaml").write_text(
        f"include: {ROOT / 'tasks' / 'ext_copy_gen.yaml'}\n"
        "task: ext_copy_sampled\n"
        f"repeats: {REPEATS}\n"
        "generation_kwargs:\n  until: ['\\n']\n  do_sample: true\n  temperature: 0.9\n  max_gen_toks: 12\n"
        "filter_list:\n  - name: all\n    filter:\n      - function: take_first_k\n        k: 3\n"
    )
    return folder


def samples(lm, include: Path) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(ROOT / "tasks"), str(include)], include_defaults=False)
    out = simple_evaluate(model=lm, tasks=["ext_copy_sampled"], task_manager=manager, log_samples=True,
                          limit=LIMIT, verbosity="WARNING")
    return {s["doc_id"]: s["resps"] for s in out["samples"]["ext_copy_sampled"]}


def build(tiny_model_path, **extra):
    from lm_eval_ext.hf.adapter import HfExtLM

    return HfExtLM(pretrained=str(tiny_model_path), device="cpu", dtype="float32", **extra)


@pytest.fixture(scope="module")
def reference(tiny_model_path, tmp_path_factory):
    include = sampled_task(tmp_path_factory.mktemp("task"))
    return include, samples(build(tiny_model_path, cache="off"), include)


def test_samples_are_the_same_at_any_pool_size_and_repeats_differ(tiny_model_path, reference):
    include, want = reference
    draws = [r[0] for r in want.values()]  # lm-eval logs one request's repeats as one list
    assert len(want) == LIMIT and all(len(d) == REPEATS for d in draws)
    assert all(len(set(d)) > 1 for d in draws), "repeats must be distinct draws"
    one_row = build(tiny_model_path, cache="off", max_batch_tokens="off")  # batch_size=1: one live row
    assert samples(one_row, include) == want
    assert one_row.engine.cost_report.as_dict()["ext_copy_sampled/generate_until"]["mean_live_rows"] == 1.0


def test_a_resumed_run_gives_the_same_samples(tiny_model_path, reference, tmp_path, monkeypatch):
    from lm_eval_ext.hf.compute.continuous import ContinuousGenerator

    include, want = reference
    real, finished = ContinuousGenerator._finish, []

    def interrupt_after_seven(self, on_finished):
        def counted(index, tokens):
            finished.append(index)
            if len(finished) == 7:
                raise KeyboardInterrupt
            on_finished(index, tokens)

        return real(self, counted)

    monkeypatch.setattr(ContinuousGenerator, "_finish", interrupt_after_seven)
    with pytest.raises(RunInterrupted, match=r"^interrupted after 6 of 18 requests; 6 are in the request cache"):
        samples(build(tiny_model_path, cache_dir=str(tmp_path)), include)
    monkeypatch.setattr(ContinuousGenerator, "_finish", real)
    resumed = build(tiny_model_path, cache_dir=str(tmp_path))
    assert samples(resumed, include) == want
    totals = resumed.request_cache_report()["totals"]
    assert (totals["hits"], totals["misses"]) == (6, LIMIT * REPEATS - 6)
