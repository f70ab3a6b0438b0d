"""PURE: turn a worker's merged steps into table rows (baseline vs candidate, with noise verdict).

A *row* compares two sides, each a set of measured repetitions picked from the steps by
implementation label (``impl``) and optionally by a label prefix. The time of one repetition is
chosen by a ``timing``: the whole evaluation, one request type, or model load plus evaluation.
:func:`best_row` takes as baseline the fastest of several configurations (stock at each batch size).
A row may carry a ``key`` (a task name, ``mmlu``): what ``run.py --docs`` markers select it by.
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.lib.agreement import compare_samples
from benchmarks.lib.stats import scaling_efficiency, speedup_verdict, summarize

Timing = Callable[[dict], float | None]


def eval_time(step: dict) -> float | None:
    return step.get("eval_s")


def load_plus_eval_time(step: dict) -> float | None:
    if step.get("eval_s") is None:
        return None
    return (step.get("load_s") or 0.0) + step["eval_s"]


def request_type_time(request_type: str) -> Timing:
    def timing(step: dict) -> float | None:
        entry = step.get("request_types", {}).get(request_type)
        return entry["time_s"] if entry else None

    return timing


def pick(steps: list[dict], impl: str, label_prefix: str = "") -> list[dict]:
    """Measured, error-free steps of one side (a step's ``side``, else its ``impl``) and label prefix."""
    return [s for s in steps if s.get("side", s["impl"]) == impl and s.get("measured", True)
            and s["label"].startswith(label_prefix) and "error" not in s]


def side_stats(steps: list[dict], timing: Timing, tasks: list[str] | None) -> dict:
    """Times, spread, throughput and memory of one side of a row."""
    times = [t for t in (timing(s) for s in steps) if t is not None]
    spread = summarize(times)
    out: dict = {"times_s": times, "repetitions": len(times)}
    if spread is None:
        return out
    out |= {"median_s": spread.median, "min_s": spread.min, "max_s": spread.max,
            "relative_spread": spread.relative_spread}
    work = _workload(steps[0], tasks)
    if work["requests"]:
        out |= {"requests": work["requests"], "tokens": work["tokens"],
                "requests_per_s": work["requests"] / spread.median, "tokens_per_s": work["tokens"] / spread.median}
    loads = [s["load_s"] for s in steps if s.get("load_s") is not None]
    if loads:
        out["load_s"] = summarize(loads).median
    for key in ("peak_rss_bytes", "rss_growth_bytes", "peak_rss_sum_bytes", "peak_gpu_bytes", "gpu_growth_bytes"):
        values = [s[key] for s in steps if key in s]
        if values:
            out[key] = max(values)
    out |= _cache_and_cost(steps[0], tasks, work)
    return out


#: lm-eval output_type -> the LM method its requests go to
METHOD_OF_OUTPUT_TYPE = {"multiple_choice": "loglikelihood", "loglikelihood": "loglikelihood",
                         "loglikelihood_rolling": "loglikelihood_rolling", "generate_until": "generate_until"}


def _workload(step: dict, tasks: list[str] | None) -> dict:
    entries = [v for task, v in step.get("workload", {}).items() if tasks is None or task in tasks]
    methods = {METHOD_OF_OUTPUT_TYPE.get(e.get("request_type"), "") for e in entries}
    return {"requests": sum(e["requests"] for e in entries), "tokens": sum(e["tokens"] for e in entries),
            "methods": methods}


def ext_counters(step: dict, tasks: list[str] | None) -> dict[str, float]:
    """The extension's cost counters for this run, summed over the row's tasks."""
    totals: dict[str, float] = {}
    for task, counters in step.get("extension", {}).get("by_task", {}).items():
        if tasks is None or task in tasks:
            for key, value in counters.items():
                totals[key] = totals.get(key, 0) + value
    if "tokens_computed" in totals:
        totals["computed_tokens"] = totals.pop("tokens_computed") + totals.get("computed_tokens", 0)
    return totals


def _cache_and_cost(step: dict, tasks: list[str] | None, work: dict) -> dict:
    """Cost counters from the extension's report when it has them. Cache hits: its own counter,
    else requests that never reached the model (lm-eval's ``--use_cache`` answers them before the
    model's methods are called)."""
    counters = ext_counters(step, tasks)
    out = {k: counters[k] for k in ("useful_tokens", "computed_tokens", "padded_tokens", "oom_retries") if k in counters}
    if "cache_hits" in counters:
        out["cache_hits"] = counters["cache_hits"]
    elif work["requests"]:
        computed = sum(e["computed_requests"] for name, e in step.get("request_types", {}).items()
                       if name in work["methods"])
        out["cache_hits"] = max(0, work["requests"] - computed)
    return out


def samples_for(step: dict, tasks: list[str] | None) -> dict:
    return {t: v for t, v in step.get("samples", {}).items() if tasks is None or t in tasks}


def agreement(base_steps: list[dict], cand_steps: list[dict], tasks: list[str] | None) -> dict | None:
    """Every candidate repetition against the baseline's first measured repetition."""
    if not base_steps or not cand_steps:
        return None
    reference = samples_for(base_steps[0], tasks)
    reports = [compare_samples(reference, samples_for(s, tasks)) for s in cand_steps if s.get("samples")]
    if not reports:
        return None
    worst = min(reports, key=lambda r: (r["all_agree"], r["agreeing_samples"] - r["compared_samples"]))
    diffs = [r["max_abs_loglikelihood_diff"] for r in reports if r["max_abs_loglikelihood_diff"] is not None]
    return worst | {"max_abs_loglikelihood_diff": max(diffs) if diffs else None, "repetitions_compared": len(reports)}


def make_row(name: str, steps: list[dict], *, baseline: tuple[str, str], candidate: tuple[str, str],
             timing: Timing = eval_time, tasks: list[str] | None = None, labels: tuple[str, str] = ("stock", "ext"),
             check_agreement: bool = True, num_processes: int | None = None, key: str | None = None) -> dict:
    """A table row: ``baseline``/``candidate`` are ``(impl, label_prefix)`` selectors."""
    base_steps, cand_steps = pick(steps, *baseline), pick(steps, *candidate)
    base, cand = side_stats(base_steps, timing, tasks), side_stats(cand_steps, timing, tasks)
    for stats, (side, _) in ((base, baseline), (cand, candidate)):
        if "load_s" not in stats:  # model loaded once, before the warm-up: report that load
            loads = [s["load_s"] for s in steps if s.get("side", s["impl"]) == side and s.get("load_s") is not None]
            if loads:
                stats["load_s"] = loads[0]
    row = {"row": name, "baseline_label": labels[0], "candidate_label": labels[1], "baseline": base,
           "candidate": cand, "comparison": speedup_verdict(base["times_s"], cand["times_s"])}
    if check_agreement:
        row["agreement"] = agreement(base_steps, cand_steps, tasks)
    if num_processes:
        row["scaling_efficiency"] = scaling_efficiency(base.get("median_s"), cand.get("median_s"), num_processes)
    if key is not None:
        row["key"] = key
    return row


def failed(steps: list[dict], impl: str, label_prefix: str = "") -> bool:
    """Whether a measured step of this side and label prefix ended in an error."""
    return any(s.get("side", s["impl"]) == impl and s.get("measured", True) and s["label"].startswith(label_prefix)
               and "error" in s for s in steps)


def best_row(name: str, steps: list[dict], *, baselines: list[str], candidate: str, label_prefix: str = "",
             labels: tuple[str, str] = ("stock {best}", "ext"), **kwargs) -> dict:
    """A row whose baseline is the fastest of ``baselines`` (lowest median under ``timing``); a
    configuration with a failed repetition is not a candidate for best (its median would flatter
    it). ``labels[0]`` may name ``{best}``. The medians of every baseline are kept in the row."""
    timing = kwargs.get("timing", eval_time)
    medians = {}
    for side in baselines:
        spread = summarize([t for t in (timing(s) for s in pick(steps, side, label_prefix)) if t is not None])
        if spread is not None and not failed(steps, side, label_prefix):
            medians[side] = spread.median
    best = min(medians, key=medians.__getitem__) if medians else baselines[0]
    row = make_row(name, steps, baseline=(best, label_prefix), candidate=(candidate, label_prefix),
                   labels=(labels[0].format(best=best), labels[1]), **kwargs)
    row["baseline_medians_s"] = medians
    row["best_baseline"] = best
    return row
