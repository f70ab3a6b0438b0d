"""What a new user types wrong, caught before it reaches a traceback: generation arguments, devices,
and lm-eval's own errors for --limit and --tasks, each one line naming the fix (the real CLI runs of
these cases are in tests/reliability/test_probe_cases.py and scripts/probe_cli.py)."""

from __future__ import annotations

import pytest

from lm_eval_ext.backend.gen_kwargs import check_gen_kwargs
from lm_eval_ext.errors import UserError
from lm_eval_ext.lm_mistakes import translate
from lm_eval_ext.plan.hf_settings import check_device_kind

WHERE = "(from --gen_kwargs or the task's generation_kwargs)"


@pytest.mark.parametrize(("gen_kwargs", "message"), [
    ({"max_gen_toks": "abc"}, f"gen_kwargs max_gen_toks='abc' must be a whole number of tokens, at least 1 {WHERE}; "
                              "use e.g. --gen_kwargs max_gen_toks=256"),
    ({"max_gen_toks": -5}, f"gen_kwargs max_gen_toks=-5 must be a whole number of tokens, at least 1 {WHERE}; "
                           "use e.g. --gen_kwargs max_gen_toks=256"),
    ({"max_new_tokens": 0}, f"gen_kwargs max_new_tokens=0 must be a whole number of tokens, at least 1 {WHERE}; "
                            "use e.g. --gen_kwargs max_new_tokens=256"),
    ({"temperature": "abc"}, f"gen_kwargs temperature='abc' must be a number >= 0 (0 is greedy) {WHERE}; "
                             "use e.g. --gen_kwargs temperature=0.7"),
    ({"temperature": -1, "do_sample": True}, f"gen_kwargs temperature=-1 must be a number >= 0 (0 is greedy) {WHERE}; "
                                             "use e.g. --gen_kwargs temperature=0.7"),
    ({"do_sample": "maybe"}, f"gen_kwargs do_sample='maybe' must be true or false {WHERE}; use e.g. --gen_kwargs "
                             "do_sample=true"),
    ({"do_sample": True}, f"gen_kwargs temperature=None cannot sample: do_sample=true needs a temperature > 0 {WHERE}; "
                          "use e.g. --gen_kwargs do_sample=true,temperature=0.7 (or do_sample=false for greedy)"),
    ({"top_p": 1.5, "do_sample": True, "temperature": 1.0},
     f"gen_kwargs top_p=1.5 must be a number in (0, 1] {WHERE}; use e.g. --gen_kwargs top_p=0.9"),
    ({"top_k": -1}, f"gen_kwargs top_k=-1 must be a whole number >= 0 {WHERE}; use e.g. --gen_kwargs top_k=50"),
    ({"until": 5}, f"gen_kwargs until=5 must be a stop string or a list of them {WHERE}; use e.g. --gen_kwargs "
                   "until=Question:"),
    ({"seed": "x"}, f"gen_kwargs seed='x' must be a whole number {WHERE}; use e.g. --gen_kwargs seed=1234"),
])
def test_generation_arguments_no_backend_can_use_are_one_line(gen_kwargs, message):
    with pytest.raises(UserError) as failure:
        check_gen_kwargs(gen_kwargs)
    assert str(failure.value) == message


@pytest.mark.parametrize("gen_kwargs", [
    {}, {"until": ["\n"], "do_sample": False, "max_gen_toks": 24}, {"do_sample": True, "temperature": 0.7, "seed": 1},
    {"temperature": 0.0}, {"top_p": 1.0, "top_k": 0, "min_p": 0.0, "num_beams": 2}, {"until": "Q:"},
])
def test_usable_generation_arguments_pass(gen_kwargs):
    check_gen_kwargs(gen_kwargs)


@pytest.mark.parametrize(("device", "mps", "message"), [
    ("mps", False, "device=mps: no MPS device here (torch.backends.mps.is_available() is False); pass --device cpu, "
                   "or drop --device to run on CPU"),
    ("mps:0", True, "device=mps:0: hf_ext plans for CUDA GPUs and the CPU only; pass --device cpu, or use stock "
                    "--model hf on MPS"),
    ("xpu", False, "device='xpu' is not a device hf_ext can use; pass --device cuda (every visible GPU), cuda:N (one "
                   "GPU) or cpu, or drop --device"),
    ("gpu", False, "device='gpu' is not a device hf_ext can use; pass --device cuda (every visible GPU), cuda:N (one "
                   "GPU) or cpu, or drop --device"),
])
def test_devices_hf_ext_cannot_plan_for_are_refused(device, mps, message):
    with pytest.raises(UserError) as failure:
        check_device_kind(device, mps_available=mps)
    assert str(failure.value) == message


@pytest.mark.parametrize("device", ["auto", "cpu", "cpu:0", "cuda", "cuda:1"])
def test_cuda_and_cpu_pass(device):
    check_device_kind(device, mps_available=False)


@pytest.mark.parametrize(("error", "starts"), [
    (ValueError("task.build_requests() did not find any docs!"), "a task has no documents to evaluate (--limit 0"),
    (ValueError("Indices for islice() must be None or an integer: 0 <= x <= sys.maxsize."),
     "--limit must be a positive number of documents per task"),
    (ValueError("No tasks specified, or no tasks found. Please verify the task names."), "--tasks: no task given;"),
    (ValueError("Tasks not found:  ext_arith_mc"), "Tasks not found:  ext_arith_mc; a space after a comma is part"),
    (AssertionError("Error: number of fewshot samples requested exceeds the 20 that are available."),
     "--num_fewshot asks for more examples than the task's few-shot pool holds (20 available); pass --num_fewshot "
     "20 or less"),
    (AssertionError("Elements of --samples should be in the interval [0,k-1] where k is the number of total examples. "
                    "In this case, k=30."), "--samples names a document that does not exist: Elements of --samples"),
])
def test_lm_eval_s_errors_for_what_was_typed_become_one_line(error, starts):
    assert translate(error).startswith(starts)
    assert "\n" not in translate(error)


def test_other_errors_keep_their_traceback():
    assert translate(ValueError("something inside lm-eval broke")) is None
    assert translate(RuntimeError("Tasks not found: x")) is None


def test_a_generation_option_transformers_does_not_know_is_one_line():
    pytest.importorskip("transformers")
    from lm_eval_ext.hf.requests import _check_generate_options

    _check_generate_options({"num_beams": 2, "do_sample": False, "repetition_penalty": 1.1})
    with pytest.raises(UserError) as failure:
        _check_generate_options({"temperature": 0.5, "foo": 1})
    assert str(failure.value) == (f"gen_kwargs foo=1 is not a generation argument transformers knows {WHERE}; drop "
                                  "it, or use one of transformers' GenerationConfig fields (num_beams, top_p, "
                                  "repetition_penalty, ...)")
    with pytest.raises(UserError, match=r"^gen_kwargs num_beam=2 is not a generation argument transformers knows "
                                        r"\(did you mean 'num_beams'\?\)"):
        _check_generate_options({"num_beam": 2})
