"""EDGE: lm-eval's own errors for what a user typed, turned into one line that names the fix.

lm-eval reports a mistyped ``--tasks`` or ``--model``, ``--limit 0``, a negative ``--limit``, no task
at all, too many few-shot examples or a ``--samples`` id out of range as a ``ValueError``/``KeyError``/
``AssertionError`` with a traceback (some after the model has loaded).
:func:`translate` recognises them by lm-eval's first line (0.4.13) and returns the line to print;
anything else returns ``None`` and keeps its traceback: it is not the user's typing. Used by
``lm-eval-ext run`` and by the excepthook installed when lm-eval builds one of our models (so
``lm_eval --model hf_ext ...`` prints the same lines).
"""

from __future__ import annotations

import re

from lm_eval_ext.tasks_dir import shipped_tasks_dir

SHIPPED = "ext_suite, ext_arith_mc, ext_copy_gen, ext_prose_rolling"


def _first_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__


#: what lm-eval raises for what a user typed (its few-shot and --samples checks are asserts)
TRANSLATED = (KeyError, ValueError, AssertionError)


def translate(exc: BaseException) -> str | None:
    if not isinstance(exc, TRANSLATED):
        return None
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 8:
        chain.append(chain[-1].__cause__)
    lines = [_first_line(e) for e in chain]
    first = lines[0]
    if first.startswith("Tasks not found:"):
        spaced = "; a space after a comma is part of the next name: write --tasks a,b" if "  " in first else ""
        return (f"{first}{spaced}; `lm_eval ls tasks --include_path {shipped_tasks_dir()}` lists every task "
                f"(lm-eval-ext ships {SHIPPED})")
    if first.startswith("Attempted to load model"):
        hint = next((line for line in lines if line.startswith("Unknown model")), first.split("!")[0] + ".")
        return f"--model: {hint} (lm-eval-ext adds hf_ext and vllm_ext)"
    if first.startswith("task.build_requests() did not find any docs"):
        return ("a task has no documents to evaluate (--limit 0 selects none; so does an empty --samples list or "
                "split); pass --limit N with N >= 1 (or a fraction such as 0.5), or drop --limit")
    if first.startswith("Indices for islice() must be None or an integer"):
        return ("--limit must be a positive number of documents per task (or a fraction such as 0.5); a negative "
                "--limit selects nothing; pass e.g. --limit 10, or drop --limit")
    if first.startswith("Error: number of fewshot samples requested exceeds"):
        available = re.search(r"exceeds the (\d+)", first)
        most = available.group(1) if available else "fewer"
        return (f"--num_fewshot asks for more examples than the task's few-shot pool holds ({most} available); "
                f"pass --num_fewshot {most} or less")
    if first.startswith("Elements of --samples should be in the interval"):
        return f"--samples names a document that does not exist: {first}; pick ids from that interval"
    if first.startswith("No tasks specified, or no tasks found"):
        return (f"--tasks: no task given; name one or more, e.g. --tasks ext_suite (lm-eval-ext ships {SHIPPED}; "
                f"`lm_eval ls tasks --include_path {shipped_tasks_dir()}` lists every task)")
    return None
