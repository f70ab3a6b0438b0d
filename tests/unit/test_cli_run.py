"""`lm-eval-ext run` is lm-eval's CLI plus our models and tasks; user mistakes are one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lm_eval_ext.commands.run import include_paths

BIN = Path(sys.executable).parent


def test_include_paths_adds_shipped_folder_once():
    assert include_paths(None, "/t") == ["/t"]
    assert include_paths("/mine", "/t") == ["/mine", "/t"]
    assert include_paths(["/a", "/t"], "/t") == ["/a", "/t"]


def test_run_finds_shipped_tasks_without_include_path(tiny_model_path, tmp_path, scratch_env):
    done = subprocess.run(
        [str(BIN / "lm-eval-ext"), "run", "--model", "hf_ext", "--model_args",
         f"pretrained={tiny_model_path}", "--tasks", "ext_copy_gen", "--limit", "2"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=scratch_env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ext_copy_gen" in done.stdout and "exact_match" in done.stdout


def test_bad_model_arg_is_one_line_without_traceback(tiny_model_path, tmp_path, scratch_env):
    done = subprocess.run(
        [str(BIN / "lm_eval"), "--model", "hf_ext", "--model_args",
         f"pretrained={tiny_model_path},batchsize=4", "--tasks", "ext_copy_gen",
         "--include_path", str(Path(__file__).resolve().parents[2] / "tasks")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=scratch_env,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "unknown hf_ext model_args key 'batchsize' (did you mean 'batch_size'?)" in done.stderr


def test_cli_without_subcommand_prints_help():
    done = subprocess.run([str(BIN / "lm-eval-ext")], capture_output=True, text=True)
    assert done.returncode == 2 and "run" in done.stdout
