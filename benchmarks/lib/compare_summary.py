"""PURE: what ``benchmarks/compare_hf.py`` concludes from its runs, and its rows for ``run.py``.

A configuration (stock ``hf batch_size=8``, ``hf_ext ...``) runs once per repetition, the
configurations of a task interleaved (A B C, C B A, ...). Per configuration we keep the median
wall time; stock's best is the configuration with the lowest median, and the speedup is stock's
best median over ``hf_ext``'s, called faster only when the repetitions do not overlap
(:func:`benchmarks.lib.stats.speedup_verdict`).
"""

from __future__ import annotations

import math

from benchmarks.lib.agreement import compare_samples
from benchmarks.lib.stats import speedup_verdict, summarize

EXT = "hf_ext max_batch_tokens=auto"
EXT_UNSHARED = "hf_ext unshared"


def useful_tokens(result: dict) -> int:
    return sum(int(e.get("useful_tokens", 0)) for e in result.get("cost_report", {}).values())


def agreement(expected: dict, got: dict) -> dict:
    """Per-sample agreement of two runs: worst |delta loglikelihood|, mismatched is_greedy and
    generations, and whether every metric is equal (rel 1e-6)."""
    worst_abs, worst_rel, greedy_diff, text_diff = 0.0, 0.0, 0, 0
    for doc, want in expected["responses"].items():
        have = got["responses"][doc]
        for w, h in zip(want, have, strict=True):
            if isinstance(w, str):
                text_diff += w != h
                continue
            w_ll, h_ll = (w, h) if isinstance(w, float) else (w[0], h[0])
            worst_abs = max(worst_abs, abs(w_ll - h_ll))
            worst_rel = max(worst_rel, abs(w_ll - h_ll) / max(1e-12, abs(w_ll)))
            if isinstance(w, list):
                greedy_diff += w[1] != h[1]
    metrics_equal = all(math.isclose(v, got["metrics"].get(k, float("nan")), rel_tol=1e-6)
                        for k, v in expected["metrics"].items())
    return {"max_abs_loglikelihood_diff": worst_abs, "max_rel_loglikelihood_diff": worst_rel,
            "is_greedy_mismatches": greedy_diff, "generation_mismatches": text_diff,
            "metrics_equal": metrics_equal}


def merge_repetitions(results: list[dict]) -> dict:
    """One configuration's repetitions as one result: the first repetition's outputs, every wall
    time (``walls_s``), their median as ``wall_s``, the largest peak RSS. A configuration that
    failed or was skipped in any repetition is reported by that repetition."""
    broken = next((r for r in results if "wall_s" not in r), None)
    if broken is not None:
        return broken
    walls = [r["wall_s"] for r in results]
    merged = {**results[0], "walls_s": walls, "wall_s": summarize(walls).median,
              "peak_rss_bytes": max(r["peak_rss_bytes"] for r in results)}
    if all("model_s" in r for r in results):
        merged["models_s"] = [r["model_s"] for r in results]
        merged["model_s"] = summarize(merged["models_s"]).median
    return merged


def summarize_task(task: str, runs: dict) -> dict:
    """``runs``: configuration -> merged result (responses still in). Drops the responses."""
    ext = runs[EXT]
    stock = {k: v for k, v in runs.items() if k.startswith("hf ") and "wall_s" in v}
    if "wall_s" not in ext or not stock:
        return {"runs": runs, "error": "a configuration failed"}
    best = min(stock, key=lambda k: stock[k]["wall_s"])
    useful = useful_tokens(ext)
    for result in runs.values():
        if "wall_s" in result:
            result["useful_tokens_per_s"] = useful / result["wall_s"]
    summary = {
        "best_stock": best,
        "speedup_vs_best_stock": stock[best]["wall_s"] / ext["wall_s"],
        "comparison": speedup_verdict(stock[best].get("walls_s", [stock[best]["wall_s"]]),
                                      ext.get("walls_s", [ext["wall_s"]])),
        "peak_rss_ratio_vs_best_stock": ext["peak_rss_bytes"] / stock[best]["peak_rss_bytes"],
        "agreement_vs_best_stock": agreement(stock[best], ext),
        "samples_agreement": compare_samples({task: stock[best]["responses"]}, {task: ext["responses"]}),
    }
    if ext.get("model_s") and stock[best].get("model_s"):  # the same stock configuration, model time only
        summary["model_speedup_vs_best_stock"] = stock[best]["model_s"] / ext["model_s"]
    if EXT_UNSHARED in runs and "wall_s" in runs[EXT_UNSHARED]:
        summary["agreement_unshared_vs_shared"] = agreement(ext, runs[EXT_UNSHARED])
    for result in runs.values():
        result.pop("responses", None)
    return {"runs": runs, **summary}


def efficiency(result: dict) -> dict:
    """Useful-token throughput of unshared hf_ext scoring against the peak forward throughput:
    end to end (lm-eval's whole evaluate) and inside the engine's batches only."""
    peak = result.get("peak_forward", {}).get("tokens_per_s")
    unshared = result["tasks"].get("ext_arith_mc", {}).get("runs", {}).get(EXT_UNSHARED, {})
    if not peak or "wall_s" not in unshared:
        return {}
    report = unshared["cost_report"]
    useful = sum(e["useful_tokens"] for e in report.values())
    engine_s = sum(e["wall_s"] for e in report.values())
    return {"peak_forward_tokens_per_s": peak,
            "unshared_end_to_end_tokens_per_s": useful / unshared["wall_s"],
            "unshared_engine_tokens_per_s": useful / engine_s,
            "end_to_end_fraction_of_peak": useful / unshared["wall_s"] / peak,
            "engine_fraction_of_peak": useful / engine_s / peak}


def _side(run: dict) -> dict:
    walls = run.get("walls_s", [run["wall_s"]])
    spread = summarize(walls)
    side = {"times_s": walls, "repetitions": len(walls), "median_s": spread.median, "min_s": spread.min,
            "max_s": spread.max, "relative_spread": spread.relative_spread,
            "peak_rss_bytes": run["peak_rss_bytes"]}
    if run.get("useful_tokens_per_s"):
        side["tokens_per_s"] = run["useful_tokens_per_s"]
    return side


def runner_rows(result: dict) -> list[dict]:
    """Rows in ``benchmarks/lib/rows.py``'s shape: per task, stock's best vs ``hf_ext``."""
    rows = []
    for task, entry in result["tasks"].items():
        if "best_stock" not in entry:
            continue
        best, docs = entry["best_stock"], (result.get("limits") or {}).get(task) or "all"
        rows.append({
            "row": f"compare_hf {task} ({docs} docs): stock's best vs hf_ext",
            "baseline_label": f"stock {best.removeprefix('hf ')}", "candidate_label": "hf_ext",
            "baseline": _side(entry["runs"][best]), "candidate": _side(entry["runs"][EXT]),
            "comparison": entry["comparison"], "agreement": entry["samples_agreement"],
        })
    return rows
