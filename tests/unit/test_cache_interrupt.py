"""Ctrl-C mid-run: one line that says how many requests are safe, and a rerun that resumes."""

from __future__ import annotations

import pytest
from tests.unit.cache_fakes import FakeCachedLM, fake_value, requests

from lm_eval_ext.errors import RunInterrupted


class InterruptedLM(FakeCachedLM):
    """Ctrl-C arrives after ``interrupt_after`` results (mid-batch, as a real SIGINT would)."""

    def __init__(self, *args, interrupt_after: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.interrupt_after = interrupt_after

    def _value(self, request_type, request):
        if len(self.computed) == self.interrupt_after:
            raise KeyboardInterrupt
        return super()._value(request_type, request)


def test_ctrl_c_says_how_many_are_cached_and_the_rerun_resumes(tmp_path):
    todo = requests("loglikelihood", 10)
    with pytest.raises(RunInterrupted) as failure:
        InterruptedLM(tmp_path, batch_size=2, interrupt_after=5).loglikelihood(todo)
    assert str(failure.value) == ("interrupted after 5 of 10 requests; 5 are in the request cache; rerun the same "
                                  "command to resume")
    with pytest.raises(RunInterrupted) as failure:  # interrupted again: the count includes the earlier run
        InterruptedLM(tmp_path, batch_size=2, interrupt_after=3).loglikelihood(todo)
    assert str(failure.value).startswith("interrupted after 8 of 10 requests; 8 are in the request cache")
    rerun = FakeCachedLM(tmp_path, batch_size=2)
    assert rerun.loglikelihood(todo) == [fake_value("loglikelihood", r.args, "") for r in todo]
    assert len(rerun.computed) == 2


def test_ctrl_c_with_a_cache_that_does_not_write_says_so(tmp_path):
    with pytest.raises(RunInterrupted) as failure:
        InterruptedLM(tmp_path, mode="write", batch_size=2, interrupt_after=1).loglikelihood(requests("loglikelihood", 2))
    with pytest.raises(RunInterrupted) as failure:
        InterruptedLM(tmp_path, mode="read", batch_size=2, interrupt_after=0).loglikelihood(requests("loglikelihood", 4))
    assert str(failure.value) == ("interrupted after 1 of 4 requests; cache=read stores nothing, so a rerun computes "
                                  "them again (cache=readwrite would keep them)")


def test_ctrl_c_with_the_cache_off_counts_what_was_computed_and_exits_130(tmp_path):
    with pytest.raises(RunInterrupted) as failure:
        InterruptedLM(tmp_path, mode="off", batch_size=2, interrupt_after=3).loglikelihood(requests("loglikelihood", 4))
    assert str(failure.value) == ("interrupted after 3 of 4 requests; cache=off stores nothing, so a rerun computes "
                                  "them again (cache=readwrite would keep them)")
    assert failure.value.code == 130 and isinstance(failure.value, SystemExit)  # the shell's status after Ctrl-C
