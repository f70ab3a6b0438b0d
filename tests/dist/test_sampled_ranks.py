"""Sampled generation under two real gloo ranks draws the same samples as one process: each request
has its own generator, seeded from lm-eval's seed, the request and which repeat it is, never from
the rank or the documents beside it."""

from __future__ import annotations

import subprocess
import sys

from tests.adapters.test_sampled_generation import REPEATS, sampled_task
from tests.dist.test_cpu_data_parallel import BIN, ROOT, _samples
from tests.helpers import free_port

LIMIT = 8


def _args(model, include, out) -> list[str]:
    return ["-m", "lm_eval", "--model", "hf_ext", "--model_args", f"pretrained={model},cache=off",
            "--tasks", "ext_copy_sampled", "--include_path", str(include), "--limit", str(LIMIT),
            "--output_path", str(out), "--log_samples"]


def test_two_ranks_draw_the_samples_of_one_process(tiny_model_path, tmp_path, scratch_env):
    include = sampled_task(tmp_path / "task")
    single = tmp_path / "single"
    subprocess.run([sys.executable, *_args(tiny_model_path, include, single)], check=True, capture_output=True,
                   text=True, timeout=600, env=scratch_env)
    two = tmp_path / "dp2"
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "accelerate_configs" / "cpu_dp2.yaml"),
           "--main_process_port", str(free_port()), *_args(tiny_model_path, include, two)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=scratch_env)
    assert done.returncode == 0, done.stderr[-3000:]
    want, got = _samples(single), _samples(two)
    assert len(want) == LIMIT and all(len(r[0]) == REPEATS for r in want.values())
    assert got == want
