"""``lm-eval-ext plan`` end to end, as a subprocess: every planning-table case gives the planned
answer. (Its latency, under 5 s a case, is measured outside the suite: speed is not unit-tested.)"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.unit.planner_fixtures import CONFIGS, facts
from tests.unit.test_planner import TABLE

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "lm_eval_ext.cli", "plan", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def _argv(name, dtype, gpus, nodes, backend, extra):
    model_args = f"pretrained={CONFIGS / name}" + (f",dtype={dtype}" if dtype != "auto" else "")
    argv = ["--model_args", model_args, "--gpus", gpus or "none", "--nodes", str(nodes), "--backend", backend, "--json"]
    if "num_processes" in extra:
        argv += ["--num_processes", str(extra["num_processes"])]
    return argv


def test_every_table_case_through_the_cli():
    vllm_installed = importlib.util.find_spec("vllm") is not None
    for case in TABLE:
        name, dtype, gpus, nodes, backend, extra, *expected = case
        if backend == "auto" and not vllm_installed:
            continue  # the CLI then recommends hf by design; test_planner covers auto both ways
        done = run_cli(*_argv(name, dtype, gpus, nodes, backend, extra))
        assert done.returncode == 0, done.stderr
        payload = json.loads(done.stdout)
        got = [payload[k] for k in ("backend", "strategy", "num_replicas", "gpus_per_replica",
                                    "tensor_parallel_size", "pipeline_parallel_size", "max_model_len")]
        assert got == expected, name


def test_cli_never_imports_torch_on_a_warm_cache():
    warm_up = run_cli("--model_args", f"pretrained={CONFIGS / 'llama-3-8b'}", "--gpus", "8x80GiB", "--json")
    assert warm_up.returncode == 0, warm_up.stderr  # fills this test's parameter-count cache
    code = ("import sys, lm_eval_ext.cli as c; c.main(['plan', '--model_args', 'pretrained=%s', '--gpus', "
            "'8x80GiB', '--json']); print('TORCH' if 'torch' in sys.modules else 'NO_TORCH', file=sys.stderr)"
            % (CONFIGS / "llama-3-8b"))
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert "NO_TORCH" in done.stderr, done.stderr


@pytest.mark.parametrize("argv, message", [
    (["--model_args", "dtype=bfloat16"], "--model_args needs pretrained=PATH_OR_HUB_ID"),
    (["--model_args", "pretrained=x,tensor_paralel_size=2"], "unknown --model_args key 'tensor_paralel_size' "
                                                              "(did you mean 'tensor_parallel_size'?)"),
    (["--model_args", "pretrained"], "--model_args entry 'pretrained' is not key=value"),
    (["--model_args", f"pretrained={CONFIGS / 'gpt2'}", "--gpus", "4xlots"], "--gpus='lots' is not a memory size"),
    (["--model_args", f"pretrained={CONFIGS / 'gpt2'},max_model_len=long", "--gpus", "1x24GiB"],
     "max_model_len='long' must be an integer"),
    (["--model_args", f"pretrained={CONFIGS / 'gpt2'},gpu_memory_utilization=most", "--gpus", "1x24GiB"],
     "gpu_memory_utilization='most' must be a number"),
    (["--model_args", f"pretrained={CONFIGS / 'llama-3-70b'}", "--gpus", "1x24GiB", "--backend", "vllm"],
     "Smallest changes that fit:"),
])
def test_cli_errors_are_one_line_with_exit_2(argv, message):
    done = run_cli(*argv)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_human_output(capsys):
    from argparse import ArgumentParser

    from lm_eval_ext.commands import plan as command

    parser = ArgumentParser()
    command.add_arguments(parser)
    facts("qwen2.5-14b")
    args = parser.parse_args(["--model_args", f"pretrained={CONFIGS / 'qwen2.5-14b'}", "--gpus", "24GiB,24GiB"])
    assert command.main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan: hf model_split\n")
    assert "max_memory/GPU           17.1 GiB, 17.1 GiB" in out
    assert "data parallel over single GPUs is impossible" in out


def test_launch_hint_for_data_parallel(capsys):
    from argparse import ArgumentParser

    from lm_eval_ext.commands import plan as command

    parser = ArgumentParser()
    command.add_arguments(parser)
    facts("llama-2-7b", "bfloat16")
    args = parser.parse_args(["--model_args", f"pretrained={CONFIGS / 'llama-2-7b'},dtype=bfloat16",
                              "--gpus", "4x24GiB", "--nodes", "2", "--json"])
    command.main(args)
    payload = json.loads(capsys.readouterr().out)
    assert payload["launch"].startswith("accelerate launch --num_processes 8 --num_machines 2 -m lm_eval --model hf_ext")
    assert payload["model"]["num_params"] == facts("llama-2-7b").num_params


def test_cpu_data_parallel_hint_uses_torchrun(capsys):
    from argparse import ArgumentParser

    from lm_eval_ext.commands import plan as command

    parser = ArgumentParser()
    command.add_arguments(parser)
    facts("gpt2")
    args = parser.parse_args(["--model_args", f"pretrained={CONFIGS / 'gpt2'}", "--gpus", "none",
                              "--num_processes", "2"])
    command.main(args)
    out = capsys.readouterr().out
    assert "ACCELERATE_USE_CPU=true torchrun --standalone --nproc-per-node 2 -m lm_eval" in out
    assert "2 on CPU" in out and "124.4M parameters" in out


@pytest.mark.parametrize("gpus", [None, "2x24GiB"], ids=["detected", "described"])
def test_nodes_zero_is_refused_with_or_without_gpus(gpus):
    from argparse import ArgumentParser

    from lm_eval_ext.commands import plan as command
    from lm_eval_ext.errors import UserError

    parser = ArgumentParser()
    command.add_arguments(parser)
    argv = ["--model_args", f"pretrained={CONFIGS / 'qwen2.5-14b'}", "--nodes", "0"] + (["--gpus", gpus] if gpus else [])
    with pytest.raises(UserError) as failure:
        command.main(parser.parse_args(argv))
    assert str(failure.value) == "--nodes 0 must be at least 1 (the number of alike machines)"
