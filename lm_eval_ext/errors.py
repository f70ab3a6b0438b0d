"""PURE: errors for user mistakes: one message that names the field, the value and the fix.

A :class:`UserError` reaching the top of a process is printed as that one message, without a
traceback (see :func:`install_excepthook`); everything else keeps Python's normal report. A
:class:`RunInterrupted` is printed when it is raised and ends the process with its own status.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable


class UserError(ValueError):
    """A mistake in the user's input: bad model_args, flags, files or environment."""


class RunInterrupted(UserError, SystemExit):
    """Ctrl-C or SIGTERM during a computation, with what was kept and how to resume.

    Also a ``SystemExit``: uncaught, the process exits with ``code`` (130 after Ctrl-C, 143 after
    SIGTERM: the shell's 128 + signal number) and no traceback; its line is printed where it is
    raised (``lm_eval_ext.interrupts.report``), once, on rank 0."""

    def __init__(self, message: str, code: int = 130) -> None:
        UserError.__init__(self, message)
        self.code = code


class ConfigError(UserError):
    """A ``model_args`` key or value that cannot be used."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def install_excepthook(translate: Callable[[BaseException], str | None] = lambda exc: None) -> None:
    """Print an uncaught :class:`UserError` as one line instead of a traceback, and so any error
    ``translate`` turns into a line (lm-eval's own errors for what the user typed). Idempotent.

    Installed where lm-eval builds one of our models (:class:`lm_eval_ext.lm_args.EvaluatorArgsChecked`,
    before the constructor parses model_args), never by an import: importing a module must leave
    the process as it was (tests/unit/test_import_rules.py)."""
    if getattr(sys.excepthook, "_lm_eval_ext", False):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        line = str(exc) if isinstance(exc, UserError) else translate(exc)
        if line is not None:
            sys.stderr.write(f"lm-eval-ext: error: {line}\n")
            return
        previous(exc_type, exc, tb)

    hook._lm_eval_ext = True  # type: ignore[attr-defined]
    sys.excepthook = hook
