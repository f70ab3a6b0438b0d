"""Pricing counted work: the time model (measured, history, paper rates), a run's ledger (estimate
against actual), and the history, keyed by model and hardware: another model or another machine
never lends its rates."""

from __future__ import annotations

import pytest

from lm_eval_ext.backend.work import TokenCount
from lm_eval_ext.estimate import history
from lm_eval_ext.estimate.ledger import Ledger, rates_from_history
from lm_eval_ext.estimate.run_record import RunEstimate
from lm_eval_ext.estimate.time_model import (
    Rates, continuous_decode_seconds, estimate_seconds, flops_per_token, gpu_peak, paper_rates,
)
from tests.unit.planner_fixtures import facts


def scoring(computed: float, prefix: float = 0.0, requests: int = 10) -> TokenCount:
    return TokenCount(num_requests=requests, computed_tokens=computed, computed_low_tokens=computed,
                      computed_high_tokens=computed, prefill_tokens=computed, shared_prefix_tokens=prefix,
                      continuation_tokens=requests)


def test_scoring_seconds_are_tokens_over_the_rate_with_the_rates_spread():
    priced = estimate_seconds("t", scoring(1000), Rates("measured", 500.0, spread=(0.8, 1.25)))
    assert (priced.seconds, priced.seconds_low, priced.seconds_high) == pytest.approx((2.0, 1.6, 2.5))
    assert priced.source == "measured"


def test_data_parallel_divides_the_work_but_every_replica_computes_the_prefixes():
    priced = estimate_seconds("t", scoring(1000, prefix=200), Rates("paper", 100.0), num_replicas=4)
    assert priced.seconds == pytest.approx((1000 + 3 * 200) / 4 / 100)


def test_generation_spans_its_unknown_length_and_prices_decode_at_the_decode_rate():
    count = TokenCount(num_requests=2, prefill_tokens=1000, decode_tokens=100, computed_tokens=1100,
                       computed_low_tokens=1000, computed_high_tokens=1510)
    priced = estimate_seconds("g", count, Rates("measured", 1000.0, 10.0, spread=(1.0, 1.0)))
    assert (priced.seconds, priced.seconds_low, priced.seconds_high) == pytest.approx((11.0, 1.0, 52.0))


def test_a_task_the_history_ran_is_priced_at_its_own_seconds_per_token():
    rates = Rates("history", 1000.0, task_seconds_per_token={"slow": 0.01}, spread=(1.0, 1.0))
    assert estimate_seconds("slow", scoring(500), rates).seconds == pytest.approx(5.0)
    assert estimate_seconds("other", scoring(500), rates).seconds == pytest.approx(0.5)


def test_paper_rates_follow_the_worked_example():
    llama = facts("llama-3-8b", dtype="bfloat16")
    peak = gpu_peak("NVIDIA H100 80GB HBM3", 80 * 2**30)
    assert peak.name == "H100 SXM" and gpu_peak("GPU", 80 * 2**30).name == "H100 SXM"
    assert gpu_peak("GPU", 24 * 2**30).name == "A10"
    per_token = flops_per_token(llama, context_tokens=0, scored_fraction=0)
    assert per_token == 2 * llama.params.num_matrix_params
    rates = paper_rates(llama, peak, kind="gpu", request_type="loglikelihood", context_tokens=0, scored_fraction=0)
    assert rates.prefill_tokens_per_s == pytest.approx(989e12 * 0.425 / per_token)
    assert rates.spread[0] < 1 < rates.spread[1] and rates.source == "paper"
    decode = paper_rates(llama, peak, kind="gpu", request_type="generate_until", context_tokens=1000,
                         scored_fraction=1.0, decode_rows=1)
    assert decode.decode_tokens_per_s < 3.35e12 / llama.weights_bytes  # one row streams every weight per token


def test_the_ledger_prices_each_call_and_measures_against_it():
    rates = {"loglikelihood": Rates("history", 100.0, spread=(1.0, 1.0))}
    ledger = Ledger(rates)
    ledger.counted("loglikelihood", {"a": scoring(300), "b": scoring(100)})
    ledger.call_done("loglikelihood", 8.0)  # split by estimated share: 3 s and 1 s estimated
    out = ledger.as_dict()
    assert out["a/loglikelihood"]["estimated_s"] == pytest.approx(3.0) and out["a/loglikelihood"]["actual_s"] == 6.0
    assert out["a/loglikelihood"]["error"] == pytest.approx(-0.5) and out["b/loglikelihood"]["actual_s"] == 2.0
    ledger.measured("a", "loglikelihood", wall_s=4.0, computed_tokens=300)
    record = ledger.history_record()
    assert record["request_types"]["loglikelihood"] == {"computed_tokens": 400, "wall_s": 6.0}
    again = rates_from_history(record, "loglikelihood")
    assert again.source == "history" and again.task_seconds_per_token["a"] == pytest.approx(4.0 / 300)
    assert rates_from_history(record, "generate_until") is None


def test_without_rates_the_ledger_counts_tokens_and_expects_half_the_budget():
    ledger = Ledger()
    ledger.counted("loglikelihood", {"a": scoring(300)})
    assert ledger.as_dict()["a/loglikelihood"]["estimated_s"] is None
    assert ledger.expected_generated("g", 256) == 128
    remembered = {"tasks": {"g": {"generate_until": {"generated_per_request": 90.0}}}}
    assert Ledger(history=remembered).expected_generated("g", 256) == 90.0


def test_generated_length_measured_keeps_the_counters_units():
    ledger = Ledger()
    count = TokenCount(num_requests=2, prefill_tokens=1000, decode_tokens=254, computed_tokens=1254)
    ledger.counted("generate_until", {"g": count})
    ledger.measured("g", "generate_until", wall_s=10.0, computed_tokens=1900.0, generated_tokens=102.0)
    record = ledger.history_record()["tasks"]["g"]["generate_until"]
    assert record["computed_tokens"] == 1000 + 100 and record["generated_per_request"] == 51.0


def test_history_is_keyed_by_model_and_hardware(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_EVAL_EXT_CACHE_DIR", str(tmp_path))
    here = history.hardware_key({"cpu": "EPYC", "cores": 2})
    elsewhere = history.hardware_key({"cpu": "Xeon", "cores": 64})
    key = history.record_key("a" * 64, here, "hf", 1)
    history.remember(key, {"request_types": {"loglikelihood": {"computed_tokens": 10, "wall_s": 1}}})
    assert history.latest(key)["request_types"]["loglikelihood"]["wall_s"] == 1
    assert history.latest(history.record_key("b" * 64, here, "hf", 1)) is None  # another model
    assert history.latest(history.record_key("a" * 64, elsewhere, "hf", 1)) is None  # another machine
    assert history.latest(history.record_key("a" * 64, here, "vllm", 1)) is None  # another backend
    for wall in range(2, 2 + history.KEEP_PER_KEY):
        history.remember(key, {"request_types": {"loglikelihood": {"computed_tokens": 10, "wall_s": wall}}})
    assert history.latest(key)["request_types"]["loglikelihood"]["wall_s"] == 1 + history.KEEP_PER_KEY


def test_a_run_remembers_its_rates_and_the_next_run_of_that_model_starts_from_them(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_EVAL_EXT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(history, "hardware_description", lambda device="cpu": {"cpu": "test", "cores": 1})
    first = RunEstimate("hf", lambda: "f" * 64, device="cpu")
    first.counted("loglikelihood", {"a": scoring(1000)})
    first.call_done("loglikelihood", 2.0)
    assert first.finish()["a/loglikelihood"]["estimated_s"] is None  # nothing remembered yet
    second = RunEstimate("hf", lambda: "f" * 64, device="cpu")
    second.counted("loglikelihood", {"a": scoring(1000)})
    assert second.ledger.as_dict()["a/loglikelihood"]["estimated_s"] == pytest.approx(2.0)
    other_model = RunEstimate("hf", lambda: "0" * 64, device="cpu")
    other_model.counted("loglikelihood", {"a": scoring(1000)})
    assert other_model.ledger.as_dict()["a/loglikelihood"]["estimated_s"] is None
    monkeypatch.setattr(history, "hardware_description", lambda device="cpu": {"cpu": "other", "cores": 1})
    other_machine = RunEstimate("hf", lambda: "f" * 64, device="cpu")
    other_machine.counted("loglikelihood", {"a": scoring(1000)})
    assert other_machine.ledger.as_dict()["a/loglikelihood"]["estimated_s"] is None


def test_a_continuous_loops_decode_priced_step_by_step():
    """The loop's schedule (``hf/compute/continuous.py``): one prompt joins a step, beside the
    live rows' decode; a decode-only step costs ``step_s`` + ``row_s`` per further row."""
    one = dict(step_s=1.0, row_s=0.25)
    assert continuous_decode_seconds([4, 3, 1], 1, **one) == 3 + 2 + 0  # one slot: each row's steps alone
    # four rows joining one a step: 0.25 + 0.5 + 0.75 beside the prefills, then 4, 3, 2, 1 rows alone
    assert continuous_decode_seconds([5] * 4, 4, **one) == pytest.approx(1.5 + 1.75 + 1.5 + 1.25 + 1.0)
    # the long row's tail decodes alone: what a rate at the full pool would miss
    tail = continuous_decode_seconds([3, 40], 2, **one)
    assert tail == pytest.approx(0.25 + 1.25 + 38 * 1.0)
    assert tail > (3 - 1 + 40 - 1) / 2 * (1.0 + 0.25)
    assert continuous_decode_seconds([1, 1, 1], 8, **one) == 0.0  # the first token comes from the prefill


def test_a_measurement_without_decode_steps_is_one_line_and_a_flat_line_otherwise():
    from lm_eval_ext.bill.measure import _fit_decode_steps
    from lm_eval_ext.errors import UserError

    with pytest.raises(UserError, match=r"--measure: the timed generation produced no decode step .* leave --measure "
                                        r"out to use the history or the paper estimate"):
        _fit_decode_steps([])
    assert _fit_decode_steps([(1, 0.06), (3, 0.10), (5, 0.14)]) == pytest.approx((0.06, 0.02))
    assert _fit_decode_steps([(4, 0.2), (4, 0.2)]) == pytest.approx((0.2, 0.0))  # one row count: flat
