"""SIGTERM's handler stays in the process that installed it: a forked child (lm-eval's bootstrap
``multiprocessing.Pool``) gets the default back, so ``Pool.terminate()`` ends it even when it is
stuck where no Python handler can run. Each case runs in a fresh interpreter (the handler is
process-wide; pytest's own process must keep its default)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD_HANDLER = textwrap.dedent("""
    import multiprocessing, signal
    from lm_eval_ext import interrupts
    assert interrupts.install()
    assert signal.getsignal(signal.SIGTERM) is interrupts._on_sigterm
    with multiprocessing.get_context("fork").Pool(1) as pool:
        print("child", pool.apply(signal.getsignal, (signal.SIGTERM,)) == signal.SIG_DFL)
    print("parent", signal.getsignal(signal.SIGTERM) is interrupts._on_sigterm)
""")

# a worker where no Python handler can run, as one stuck on a lock taken mid-fork: blocked in a C
# call that does not return on other signals (sigwait on a signal nobody sends); terminate() must
# still end it
STUCK_WORKER = textwrap.dedent("""
    import multiprocessing, signal, time
    from lm_eval_ext import interrupts
    assert interrupts.install()

    def stuck(_):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
        signal.sigwait({signal.SIGUSR2})

    pool = multiprocessing.get_context("fork").Pool(1)
    pool.map_async(stuck, [0])
    time.sleep(1.0)
    started = time.monotonic()
    pool.terminate()
    pool.join()
    print("terminated in", round(time.monotonic() - started, 1))
""")


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_forked_child_has_the_default_sigterm_and_the_parent_keeps_its_handler():
    out = run(CHILD_HANDLER)
    assert "child True" in out and "parent True" in out


def test_pool_terminate_ends_a_worker_that_cannot_run_python():
    out = run(STUCK_WORKER)
    seconds = float(out.split("terminated in")[1])
    assert seconds < 30  # with the handler inherited the worker never ends and join() waits forever
