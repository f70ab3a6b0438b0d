"""EDGE (signals): SIGTERM ends a run the way Ctrl-C does, on every rank.

A scheduler ends a job at its time limit, or preempts it, with SIGTERM (SLURM sends SIGKILL
``KillWait`` seconds later, 30 by default); Python's default is to die at once, silently, with
status 143. :func:`install` (called where lm-eval builds one of our models, never by an import)
makes SIGTERM raise :class:`Terminated` in the main thread instead:

- inside a computation, the request front (``backend/front.py``) catches it as it catches Ctrl-C:
  what arrived is stored, :func:`report` prints one line (what is stored, "rerun the same command to
  resume") on rank 0, and the process exits 143 (130 after Ctrl-C); each rank stores its own;
- anywhere else (loading weights, building tasks, a collective, metrics) it ends the process with
  status 143, and the line printed at exit says that every finished request is stored.

A second SIGTERM while the store is written (:func:`shielded`) or after the line is ignored: torchrun
forwards the scheduler's SIGTERM to ranks that already received it, and the store must finish. A
SIGTERM that some code swallowed (a ``__del__`` running when it arrived) is raised again by the next.

Only the process that installed the handler keeps it: a child forked from it (lm-eval's bootstrap
``multiprocessing.Pool`` for the metrics' standard errors, a DataLoader worker) gets the default
back at once. Otherwise ``Pool.terminate()`` waits forever on a worker stuck on a lock inherited
mid-fork: a Python handler never runs there, the default kills at once (seen: an evaluation hung
after its last request, in ``bootstrap_stderr``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator

from lm_eval_ext.errors import RunInterrupted
from lm_eval_ext.plan.launch_env import read_launch_env

logger = logging.getLogger(__name__)

#: the shell's status for a process ended by SIGTERM / SIGINT (128 + signal number)
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM
SIGINT_EXIT_CODE = 128 + signal.SIGINT


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread: uncaught, the process exits 143 without a traceback."""

    def __init__(self) -> None:
        super().__init__(SIGTERM_EXIT_CODE)


class _State:
    installed = False
    received = False
    """a SIGTERM arrived"""
    shielded = False
    """the store of what arrived is being written: further SIGTERMs wait"""
    reported = False
    """the run's line is printed (or, on ranks other than 0, logged)"""


_state = _State()


def _on_sigterm(signum, frame) -> None:
    _state.received = True
    if _state.shielded or _state.reported:
        return
    raise Terminated()


def install() -> bool:
    """Make SIGTERM raise :class:`Terminated`; idempotent. Leaves a handler someone else installed
    alone, and does nothing outside the main thread (only it may set handlers). Returns whether
    the handler is ours."""
    if _state.installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        logger.info("SIGTERM already has a handler (%r); lm-eval-ext leaves it", signal.getsignal(signal.SIGTERM))
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    atexit.register(_say_at_exit)
    _register_fork_reset()
    _state.installed = True
    return True


@functools.cache
def _register_fork_reset() -> None:
    os.register_at_fork(after_in_child=_in_forked_child)


def _in_forked_child() -> None:
    """A forked child is not the run: SIGTERM ends it as by default (see the module docstring)."""
    global _state
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:  # forked from a thread other than the main one: it cannot set handlers
            return
    _state = _State()


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Write the store with SIGTERM held off (it is noted, and the interruption under way ends the run)."""
    previous, _state.shielded = _state.shielded, True
    try:
        yield
    finally:
        _state.shielded = previous


def exit_code(exc: BaseException) -> int:
    return SIGTERM_EXIT_CODE if isinstance(exc, Terminated) else SIGINT_EXIT_CODE


def report(interrupted: RunInterrupted, rank: int) -> None:
    """The run's one line: printed on rank 0 (in the excepthook's form), logged on the others."""
    _state.reported = True
    if rank == 0:
        sys.stderr.write(f"lm-eval-ext: error: {interrupted}\n")
        sys.stderr.flush()
    else:
        logger.info("rank %d: %s", rank, interrupted)


def _say_at_exit() -> None:
    """SIGTERM outside a computation: the process ends with 143 and this line, on rank 0."""
    if _state.received and not _state.reported:
        report(RunInterrupted("interrupted (SIGTERM) outside a computation; every computation that finished is in "
                              "the request cache (unless cache=off or read); rerun the same command to resume",
                              SIGTERM_EXIT_CODE), _global_rank())


def _global_rank() -> int:
    try:
        return read_launch_env().rank
    except ValueError:  # a launch variable that cannot be read: the run stopped on it already
        return 0
