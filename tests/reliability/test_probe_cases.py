"""The probe's cases that ended in a traceback or a silent wrong run before they were fixed, through
the real ``lm-eval-ext run`` (scripts/probe_cli.py runs them all and prints the table): each now ends
with one line naming the fix and status 2, and no traceback. The first three are the issue's; one
case per mechanism (the other messages are checked without a process in tests/unit/test_user_lines.py)."""

from __future__ import annotations

import pytest

import probe_cli

EXPECTED = {
    "T1": "a task has no documents to evaluate (--limit 0 selects none; so does an empty --samples list or split); "
          "pass --limit N with N >= 1 (or a fraction such as 0.5), or drop --limit",
    "G1": "gen_kwargs max_gen_toks='abc' must be a whole number of tokens, at least 1 (from --gen_kwargs or the "
          "task's generation_kwargs); use e.g. --gen_kwargs max_gen_toks=256",
    "D1": "device=mps: no MPS device here (torch.backends.mps.is_available() is False); pass --device cpu, or drop "
          "--device to run on CPU",
    "G4": "gen_kwargs max_gen_toks=100000 leaves no room for the prompt in the model's max_length=1024; use "
          "max_gen_toks below 1024 (e.g. --gen_kwargs max_gen_toks=256), or a larger max_length in --model_args if "
          "the model allows it",
    "T6": "--tasks: no task given; name one or more, e.g. --tasks ext_suite (lm-eval-ext ships ext_suite, "
          "ext_arith_mc, ext_copy_gen, ext_prose_rolling; `lm_eval ls tasks --include_path {tasks}` lists every task)",
    "T10": "--num_fewshot -1 must be 0 or more (the number of examples before each question); pass e.g. "
           "--num_fewshot 5, or drop it for the task's own",
    "T12": "--include_path /no/such/dir: no such file or folder; give the folder holding your task YAMLs "
           "(lm-eval-ext's own tasks are included without it)",
}



@pytest.mark.parametrize("case_id", list(EXPECTED))
def test_probe_case_ends_in_one_line(case_id, tiny_model_path, tmp_path, tasks_dir):
    (case,) = [c for c in probe_cli.CASES if c.id == case_id]
    outcome = probe_cli.run_case(case, tmp_path)
    log = (tmp_path / case_id / "output.log").read_text()
    assert (outcome.code, outcome.ending) == (2, "one line"), log[-3000:]
    assert outcome.last_line == "lm-eval-ext run: error: " + EXPECTED[case_id].format(tasks=tasks_dir), log[-3000:]


def test_lm_eval_s_own_cli_prints_the_same_line(tiny_model_path, tmp_path):
    """``lm_eval --model hf_ext --limit 0``: the excepthook installed with the model prints the line."""
    (case,) = [c for c in probe_cli.CASES if c.id == "T14"]
    outcome = probe_cli.run_case(case, tmp_path)
    assert outcome.ending == "one line" and outcome.code == 1, (tmp_path / "T14" / "output.log").read_text()[-3000:]
    assert outcome.last_line == "lm-eval-ext: error: " + EXPECTED["T1"]
