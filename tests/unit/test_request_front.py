"""The request front (backend/front.py) over a fake backend and a real SQLite store."""

import pytest
from tests.unit.cache_fakes import FakeCachedLM, fake_value, requests
from lm_eval.api.model import CachingLM

from lm_eval_ext.cache.store import DB_FILE, CacheFileError, RequestStore

TYPES = ["loglikelihood", "loglikelihood_rolling", "generate_until"]


@pytest.mark.parametrize("request_type", TYPES)
def test_second_run_computes_nothing_and_returns_identical_results(tmp_path, request_type):
    reqs = requests(request_type, 10)
    first = FakeCachedLM(tmp_path)
    expected = getattr(first, request_type)(reqs)
    second = FakeCachedLM(tmp_path)
    assert getattr(second, request_type)(reqs) == expected
    assert second.computed == []
    totals = second.request_cache_report()["totals"]
    assert (totals["hits"], totals["misses"], totals["hit_rate"]) == (10, 0, 1.0)


def test_only_misses_are_computed_and_results_keep_request_order(tmp_path):
    FakeCachedLM(tmp_path).loglikelihood(requests("loglikelihood", 6)[::2])  # 0, 2, 4 stored
    lm = FakeCachedLM(tmp_path)
    reqs = requests("loglikelihood", 6)
    assert lm.loglikelihood(reqs) == [fake_value("loglikelihood", r.args) for r in reqs]
    assert lm.computed == [reqs[i].args for i in (1, 3, 5)]


def test_models_with_different_identity_never_share_entries(tmp_path):
    reqs = requests("loglikelihood", 5)
    FakeCachedLM(tmp_path, salt="A").loglikelihood(reqs)
    other = FakeCachedLM(tmp_path, salt="B")
    assert other.loglikelihood(reqs) == [fake_value("loglikelihood", r.args, "B") for r in reqs]
    assert len(other.computed) == 5


def test_finished_batches_survive_a_crash_and_are_not_recomputed(tmp_path):
    reqs = requests("generate_until", 10)
    crashing = FakeCachedLM(tmp_path, batch_size=3, fail_after_batches=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.generate_until(reqs)
    resumed = FakeCachedLM(tmp_path, batch_size=3)
    resumed.generate_until(reqs)
    assert resumed.computed == [r.args for r in reqs[6:]]


def test_a_backend_that_never_reports_results_is_still_cached_when_the_call_returns(tmp_path):
    lm = FakeCachedLM(tmp_path, report_results=False)  # was: a backend without lm-eval's hook
    lm.loglikelihood_rolling(requests("loglikelihood_rolling", 4))
    again = FakeCachedLM(tmp_path)
    again.loglikelihood_rolling(requests("loglikelihood_rolling", 4))
    assert again.computed == []


def test_sampled_generation_without_seed_is_recomputed_every_time(tmp_path):
    reqs = requests("generate_until", 3)
    for request in reqs:
        request.arguments = (request.arguments[0], {"do_sample": True, "temperature": 1.0})
    FakeCachedLM(tmp_path).generate_until(reqs)
    again = FakeCachedLM(tmp_path)
    again.generate_until(reqs)
    assert len(again.computed) == 3
    assert again.request_cache_report()["totals"]["not_cacheable"] == 3


@pytest.mark.parametrize(
    ("mode", "reads", "writes"),
    [("read", True, False), ("write", False, True), ("off", False, False), ("readwrite", True, True)],
)
def test_modes_read_and_write_as_named(tmp_path, mode, reads, writes):
    FakeCachedLM(tmp_path).loglikelihood(requests("loglikelihood", 2))
    lm = FakeCachedLM(tmp_path, mode=mode)
    lm.loglikelihood(requests("loglikelihood", 4))
    assert len(lm.computed) == (2 if reads else 4)
    stored = RequestStore.open(tmp_path).query("SELECT COUNT(*) FROM entries")[0][0]
    assert stored == (4 if writes else 2)


def test_read_mode_without_a_cache_creates_no_file(tmp_path):
    lm = FakeCachedLM(tmp_path / "empty", mode="read")
    lm.loglikelihood(requests("loglikelihood", 2))
    assert len(lm.computed) == 2 and not (tmp_path / "empty" / DB_FILE).exists()


def test_lm_eval_use_cache_keeps_receiving_results(tmp_path):
    lm = FakeCachedLM(tmp_path / "ours")
    stock = CachingLM(lm, str(tmp_path / "stock" / "lm_cache_rank0.db"))
    reqs = requests("loglikelihood", 3)
    stock.loglikelihood(reqs)
    assert len(stock.dbdict) == 3  # lm-eval's --use_cache file got every result
    fresh = FakeCachedLM(tmp_path / "ours")
    fresh.loglikelihood(reqs)
    assert fresh.computed == []


def test_report_counts_hits_and_misses_per_task(tmp_path):
    FakeCachedLM(tmp_path).loglikelihood(requests("loglikelihood", 3, task="mc"))
    lm = FakeCachedLM(tmp_path)
    lm.loglikelihood(requests("loglikelihood", 3, task="mc") + requests("loglikelihood", 2, task="other", offset=50))
    tasks = lm.get_model_info()["request_cache"]["tasks"]
    assert (tasks["mc"]["loglikelihood"]["hits"], tasks["mc"]["loglikelihood"]["misses"]) == (3, 0)
    assert (tasks["other"]["loglikelihood"]["hits"], tasks["other"]["loglikelihood"]["misses"]) == (0, 2)
    assert tasks["mc"]["loglikelihood"]["saved_s"] >= 0.0


def test_a_damaged_entry_stops_the_run_instead_of_returning_it(tmp_path):
    FakeCachedLM(tmp_path).loglikelihood(requests("loglikelihood", 2))
    store = RequestStore.open(tmp_path)
    store._db.execute("UPDATE entries SET value_json = '\"not a pair\"'")
    with pytest.raises(CacheFileError, match="damaged entry"):
        FakeCachedLM(tmp_path).loglikelihood(requests("loglikelihood", 2))


@pytest.mark.parametrize("has_misses", [True, False], ids=["with-misses", "all-cached"])
def test_under_a_collective_computation_every_rank_asks_the_others_once(tmp_path, has_misses):
    """Whether this rank has misses or not, it joins ``any_rank`` (a collective) exactly once: a rank
    with misses that skipped it left the others' gather paired with its own first collective inside
    the computation, and both ranks hung (two hf_ext ranks, rolling entries of one rank forgotten)."""
    from lm_eval_ext.backend.front import RequestFront

    reqs = requests("loglikelihood", 4)
    if not has_misses:
        FakeCachedLM(tmp_path).loglikelihood(reqs)
    lm = FakeCachedLM(tmp_path)
    asked = []
    lm.front = RequestFront(lm.front.cache, lm.front._compute, is_collective=lambda request_type: True,
                            any_rank=lambda flag: asked.append(flag) or True)
    lm.loglikelihood(reqs)
    assert asked == [has_misses]
    assert len(lm.computed) == (4 if has_misses else 0)  # another rank has misses: an empty call joins it
