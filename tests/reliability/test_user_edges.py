"""Issue 16, as a user hits it: each mistake below, typed at the real CLI, prints exactly one line
(no traceback) and leaves no results folder. The failures of the issue come first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _run(argv, cwd, env, **extra_env):
    done = subprocess.run([str(BIN / "lm-eval-ext"), "run", *argv], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env={**env, **extra_env})
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    return done, errors


def _argv(model_path, *extra):
    return ["--model", "hf_ext", "--model_args", f"pretrained={model_path}", "--tasks", "ext_copy_gen",
            "--limit", "2", "--output_path", "out", *extra]


@pytest.mark.parametrize(("env", "expected"), [
    ({"LOCAL_RANK": "5", "WORLD_SIZE": "2", "RANK": "1"},
     "lm-eval-ext run: error: preflight: LOCAL_RANK=5 cannot exist with WORLD_SIZE=2 (a node runs at most "
     "WORLD_SIZE processes, so LOCAL_RANK is 0..1); unset hand-set LOCAL_RANK/RANK/WORLD_SIZE and start with "
     "`accelerate launch` or `torchrun`; WORLD_SIZE=2 starts 2 processes, but MASTER_ADDR and MASTER_PORT are "
     "not set, so rank 1 cannot find rank 0; start with `accelerate launch` or `torchrun` (they set it), set "
     "MASTER_ADDR/MASTER_PORT to rank 0's host and a free port, or unset WORLD_SIZE to run one process"),
    ({"OMP_NUM_THREADS": "abc"},
     "lm-eval-ext run: error: preflight: OMP_NUM_THREADS='abc' must be a positive integer (threads per process); "
     "set e.g. OMP_NUM_THREADS=4, or unset it to let lm-eval-ext use cores / local processes"),
], ids=["impossible-rank", "omp-abc"])
def test_launch_mistakes_are_one_line(tiny_model_path, tmp_path, scratch_env, env, expected):
    done, errors = _run(_argv(tiny_model_path), tmp_path, scratch_env, **env)
    assert done.returncode == 2 and errors == [expected], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("argv", "expected"), [
    (["--model", "hf_ext", "--tasks", "no_such_task"],
     "lm-eval-ext run: error: Tasks not found: no_such_task; `lm_eval ls tasks --include_path {tasks}` lists "
     "every task (lm-eval-ext ships ext_suite, ext_arith_mc, ext_copy_gen, ext_prose_rolling)"),
    (["--model", "hf_extt", "--tasks", "ext_copy_gen"],
     "lm-eval-ext run: error: --model: Unknown model 'hf_extt'. Did you mean: hf_ext? (lm-eval-ext adds hf_ext "
     "and vllm_ext)"),
], ids=["no-such-task", "model-typo"])
def test_lm_eval_mistakes_are_lm_evals_message_in_one_line(tiny_model_path, tmp_path, scratch_env, tasks_dir,
                                                           argv, expected):
    done, errors = _run([*argv, "--model_args", f"pretrained={tiny_model_path}", "--limit", "2"],
                        tmp_path, scratch_env)
    assert done.returncode == 2 and errors == [expected.format(tasks=tasks_dir)], done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def test_a_hand_set_rank_whose_rank_zero_never_comes_gives_up_in_bounded_time(tiny_model_path, tmp_path,
                                                                               scratch_env):
    from tests.helpers import free_port

    port = free_port()  # nobody listens on it
    done, errors = _run(_argv(tiny_model_path), tmp_path, scratch_env, LOCAL_RANK="1", RANK="1", WORLD_SIZE="2",
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LM_EVAL_EXT_RENDEZVOUS_TIMEOUT_S="2")
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith(f"lm-eval-ext run: error: rank 1 waited 2 s at 127.0.0.1:{port} for rank 0 of "
                                "WORLD_SIZE=2, in vain (")
    assert f"rank 1: waiting up to 2 s at 127.0.0.1:{port} for rank 0 of WORLD_SIZE=2" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("model_args", "extra", "expected"), [
    ("pretrained={model},batch_size=8", [],
     "batch_size=8 in --model_args collides with lm-eval's own --batch_size (which passes batch_size=1 to every "
     "model); give it once, as --batch_size 8"),
    ("pretrained={model},device=cpu", [],
     "device=cpu in --model_args collides with lm-eval's own --device (which passes device=cuda:0 to every "
     "model); give it once, as --device cpu"),
    ("pretrained=", [],
     "pretrained= is empty; give a local model folder or a hub id, e.g. pretrained=.models/smollm2-135m or "
     "pretrained=HuggingFaceTB/SmolLM2-135M"),
    ("pretrained={model},prompt_lookup_num_tokens=-1", [],
     "prompt_lookup_num_tokens=-1 must be at least 0; use e.g. prompt_lookup_num_tokens=0"),
    ("pretrained={model},parallelize=True", ["--device", "cpu"],
     "parallelize=True splits a model over GPUs, and none is visible; drop parallelize (hf_ext plans the CPU run "
     "itself), or pass strategy=cpu_offload to spill weights to disk"),
    ("pretrained={model}", ["--device", "cuda:3"],
     "device=cuda:3: no CUDA device is visible (torch.cuda.is_available() is False); pass --device cpu, or drop "
     "--device to run on CPU"),
], ids=["batch_size-collides", "device-collides", "pretrained-empty", "prompt-lookup-negative",
        "parallelize-on-cpu", "device-cuda3-without-gpu"])
def test_model_args_mistakes_are_one_line(tiny_model_path, tmp_path, scratch_env, model_args, extra, expected):
    if "cuda:3" in extra:
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("a GPU is visible: cuda:3 is the planner's question there")
    argv = ["--model", "hf_ext", "--model_args", model_args.format(model=tiny_model_path), "--tasks",
            "ext_copy_gen", "--limit", "2", "--output_path", "out", *extra]
    done, errors = _run(argv, tmp_path, scratch_env)
    assert done.returncode == 2 and errors == [f"lm-eval-ext run: error: {expected}"], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
