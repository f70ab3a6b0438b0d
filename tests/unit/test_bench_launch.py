"""The one launcher: a named function in a fresh process (its result, or its failure with the log's
tail), a console command with its output, and no child process started anywhere else in benchmarks/."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from benchmarks.lib import launch
from benchmarks.scenarios.planner import load_cases, plan_command

ROOT = Path(__file__).resolve().parents[2]


def test_a_function_runs_in_a_fresh_process_and_returns_its_result(tmp_path):
    assert launch.run_function("benchmarks.lib.launch:has_module", {"name": "json"}, tmp_path) is True
    spec = json.loads((tmp_path / "child.json").read_text())
    assert spec["target"] == "benchmarks.lib.launch:has_module" and spec["kwargs"] == {"name": "json"}


def test_a_failing_child_says_why(tmp_path):
    with pytest.raises(launch.ChildFailed, match="(?s)exit code 1 .*ModuleNotFoundError"):
        launch.run_function("no_such_module:fn", {}, tmp_path, timeout_s=60)


def test_a_command_gives_its_output_and_time():
    done = launch.run_command([sys.executable, "--version"])
    assert done.returncode == 0 and done.stdout.startswith("Python") and done.wall_s > 0


def test_only_the_launcher_starts_processes():
    starters = re.compile(r"\bimport subprocess\b|\bos\.system\(|\bos\.exec|\bmultiprocessing\b|\bos\.fork\(")
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").rglob("*.py")
                 if p.name != "launch.py" and starters.search(p.read_text())]
    assert offenders == []
    code_strings = [str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").rglob("*.py")
                    if re.search(r"""["']-c["']""", p.read_text())]
    assert code_strings == []  # no child code in strings


def test_benchmarks_never_import_tests():
    importers = [str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").rglob("*.py")
                 if re.search(r"^\s*(from|import) tests\b", p.read_text(), re.M)]
    assert importers == []


def test_plan_latency_cases_are_the_planner_tests_table():
    from tests.unit.test_planner import TABLE

    cases = load_cases()
    assert [(c["model"], c["dtype"], c["gpus"], c["nodes"], c["backend"], c["extra"], c["strategy"]) for c in cases] \
        == [(t[0], t[1], t[2], t[3], t[4], t[5], t[7]) for t in TABLE]
    command = plan_command(cases[-2])
    assert command[1:3] == ["plan", "--model_args"] and command[-2:] == ["--num_processes", "1"]
    assert command[command.index("--gpus") + 1] == "4x24GiB" and "--json" in command
