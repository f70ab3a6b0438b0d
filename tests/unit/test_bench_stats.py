"""Pure parts of the benchmark instrument: statistics, verdicts, agreement, row building."""

import pytest

from benchmarks.lib.agreement import compact_samples, compare_samples
from benchmarks.lib.rows import make_row, request_type_time
from benchmarks.lib.stats import (
    FASTER, SLOWER, WITHIN_NOISE, interleaved_order, scaling_efficiency, speedup_verdict, summarize,
)


def test_summarize_median_and_spread():
    spread = summarize([3.0, 1.0, 2.0, 10.0])
    assert (spread.median, spread.min, spread.max, spread.count) == (2.5, 1.0, 10.0, 4)
    assert spread.relative_spread == pytest.approx(9.0 / 2.5)
    assert summarize([]) is None


def test_speedup_needs_non_overlapping_spreads():
    faster = speedup_verdict([10.0, 10.4, 11.0], [4.9, 5.0, 5.6])
    assert faster["verdict"] == FASTER
    assert faster["speedup"] == pytest.approx(10.4 / 5.0)
    assert faster["speedup_low"] == pytest.approx(10.0 / 5.6)
    # medians differ by 20 %, but the repetitions overlap: not a speedup
    assert speedup_verdict([10.0, 12.0, 14.0], [8.0, 10.0, 13.0])["verdict"] == WITHIN_NOISE
    assert speedup_verdict([1.0, 1.1], [2.0, 2.1])["verdict"] == SLOWER
    assert speedup_verdict([], [1.0])["speedup"] is None


def test_scaling_efficiency_and_interleaving():
    assert scaling_efficiency(10.0, 6.25, 2) == pytest.approx(0.8)
    assert scaling_efficiency(None, 1.0, 2) is None
    assert interleaved_order(["a", "b"], 3) == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]


def _samples(ll: float, text: str) -> dict:
    return compact_samples({
        "mc": [{"doc_id": 0, "resps": [[(ll, False)], [(-2.0, True)]]}],
        "gen": [{"doc_id": 0, "resps": [[text]]}],
    })


def test_agreement_tolerance_and_generations():
    base = _samples(-1.0, "Paris.")
    assert compare_samples(base, _samples(-1.0 + 5e-5, "Paris."))["all_agree"]
    off = compare_samples(base, _samples(-1.0 + 5e-4, "Paris."))
    assert (off["agreeing_samples"], off["compared_samples"]) == (1, 2)
    assert off["max_abs_loglikelihood_diff"] == pytest.approx(5e-4)
    assert not compare_samples(base, _samples(-1.0, "Paris!"))["all_agree"]


def _step(impl: str, seconds: float, ll: float = -1.0) -> dict:
    return {"label": f"{impl}-r0", "impl": impl, "measured": True, "eval_s": seconds + 1,
            "request_types": {"loglikelihood": {"time_s": seconds, "computed_requests": 2, "calls": 1}},
            "workload": {"mc": {"requests": 2, "tokens": 100, "request_type": "multiple_choice"}}, "samples": _samples(ll, "x"),
            "rss_growth_bytes": 10}


def test_make_row_uses_the_chosen_timing():
    steps = [_step("stock", 4.0), _step("ext", 2.0), _step("stock", 4.2), _step("ext", 2.1),
             {"label": "warmup-ext", "impl": "ext", "measured": False, "eval_s": 99.0}]
    row = make_row("mc", steps, baseline=("stock", ""), candidate=("ext", ""),
                   timing=request_type_time("loglikelihood"), tasks=["mc"])
    assert row["comparison"]["verdict"] == FASTER
    assert row["candidate"]["repetitions"] == 2  # the warm-up is not measured
    assert row["candidate"]["tokens_per_s"] == pytest.approx(100 / 2.05)
    assert row["agreement"]["all_agree"]
    assert row["candidate"]["cache_hits"] == 0


def test_cost_counters_per_run_from_a_cumulative_report():
    from benchmarks.lib.probes import cost_counters, counters_delta
    from benchmarks.lib.rows import ext_counters

    first = {"mc/loglikelihood": {"task": "mc", "useful_tokens": 10, "tokens_computed": 12, "padded_tokens": 16}}
    second = {"mc/loglikelihood": {"task": "mc", "useful_tokens": 25, "tokens_computed": 30, "padded_tokens": 40},
              "gen/generate_until": {"task": "gen", "useful_tokens": 5}}
    delta = counters_delta(cost_counters(first), cost_counters(second))
    assert delta == {"mc": {"useful_tokens": 15, "tokens_computed": 18, "padded_tokens": 24},
                     "gen": {"useful_tokens": 5}}
    step = {"extension": {"by_task": delta}}
    assert ext_counters(step, ["mc"]) == {"useful_tokens": 15, "computed_tokens": 18, "padded_tokens": 24}


def test_workload_counts_a_doc_once_whatever_its_filters():
    from benchmarks.lib.probes import workload

    row = {"doc_id": 0, "arguments": [("Question: 2+2?", {"until": ["Q"]})], "resps": [["4"]]}
    samples = {"gsm": [row, dict(row)]}  # one logged sample per filter, as for gsm8k
    assert workload(samples, {"gsm": "generate_until"}, lambda text: len(text.split())) == {
        "gsm": {"requests": 1, "tokens": 3, "request_type": "generate_until"}}
