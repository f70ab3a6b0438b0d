"""``lm-eval-ext plan --tasks`` end to end on the shipped tasks and the tiny model: the bill's JSON
shape, the terminal table, and one line for each mistake (a bad task name, a model without a
tokenizer, a time limit that is not a duration, a bill flag without ``--tasks``)."""

from __future__ import annotations

import json

import pytest
from tests.unit.planner_fixtures import CONFIGS
from tests.unit.test_plan_command import run_cli

TASKS = "ext_arith_mc,ext_copy_gen,ext_prose_rolling"


def test_the_bill_in_json_has_every_task_and_a_total(tiny_model_path):
    done = run_cli("--model_args", f"pretrained={tiny_model_path}", "--gpus", "none", "--tasks", TASKS,
                   "--limit", "4", "--time-limit", "1h", "--json")
    assert done.returncode == 0, done.stderr
    estimate = json.loads(done.stdout)["estimate"]
    assert sorted(estimate["tasks"]) == sorted(TASKS.split(","))
    for task in estimate["tasks"].values():
        assert {"requests", "computed_tokens", "seconds", "seconds_low", "seconds_high", "source"} <= set(task)
        assert task["seconds_low"] <= task["seconds"] <= task["seconds_high"] and task["source"] == "paper"
    arith = estimate["tasks"]["ext_arith_mc"]
    assert arith["requests"] == 4 * 4 and arith["computed_tokens"] < arith["stock_tokens"]
    assert estimate["total_seconds"] == pytest.approx(sum(t["seconds"] for t in estimate["tasks"].values()), abs=0.05)
    assert estimate["fits"] is True and estimate["verdict"] == "fits"


def test_the_bill_in_the_terminal_and_a_limit_it_does_not_fit(tiny_model_path):
    done = run_cli("--model_args", f"pretrained={tiny_model_path}", "--gpus", "none", "--tasks", "ext_prose_rolling",
                   "--limit", "2", "--time-limit", "0.000001s")
    assert done.returncode == 0, done.stderr
    assert "estimate (paper; 1 replica(s)):" in done.stdout and "ext_prose_rolling" in done.stdout
    assert "time limit 0.0 s: does not fit" in done.stdout and "  - would fit: " in done.stdout


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "arc_eazy"], "--tasks 'arc_eazy' is not a task, group or tag lm-eval knows (did you mean 'arc_easy'?)"),
    (["--tasks", "ext_arith_mc", "--time-limit", "soon"], "--time-limit 'soon' is not a duration; write e.g. 2h"),
    (["--measure"], "--measure estimates a workload: add --tasks"),
    (["--time-limit", "2h"], "--time-limit estimates a workload: add --tasks"),
])
def test_bill_mistakes_are_one_line(tiny_model_path, argv, message):
    done = run_cli("--model_args", f"pretrained={tiny_model_path}", "--gpus", "none", *argv)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_model_without_a_tokenizer_is_one_line():
    done = run_cli("--model_args", f"pretrained={CONFIGS / 'llama-3-8b'}", "--gpus", "1x80GiB", "--tasks",
                   "ext_arith_mc")
    assert done.returncode == 2
    assert "has no tokenizer that loads" in done.stderr and "pass tokenizer=PATH_OR_ID" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_measure_times_the_continuous_loop_and_the_models_own_lengths(tiny_model_path):
    """``--measure`` on a generation task: the engine's continuous loop is timed on real requests
    run to their end, and the central generated length becomes the model's own (between the
    one-token and the budget bounds), not the reference answer's."""
    args = ["--model_args", f"pretrained={tiny_model_path}", "--gpus", "none", "--tasks", "ext_copy_gen",
            "--limit", "6", "--json"]
    on_paper = json.loads(run_cli(*args).stdout)["estimate"]
    done = run_cli(*args, "--measure")
    assert done.returncode == 0, done.stderr
    estimate = json.loads(done.stdout)["estimate"]
    rates = estimate["rates"]["generate_until"]
    assert rates["source"] == "measured" and rates["decode_tokens_per_s"] > 0
    assert rates["note"].startswith("engine's continuous loop on 4 real request(s)")
    task = estimate["tasks"]["ext_copy_gen"]
    assert task["source"] == "measured" and task["seconds_low"] <= task["seconds"] <= task["seconds_high"]
    assert task["computed_tokens_low"] <= task["computed_tokens"] <= task["computed_tokens_high"]
    assert task["computed_tokens_low"] == on_paper["tasks"]["ext_copy_gen"]["computed_tokens_low"]
