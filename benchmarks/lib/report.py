"""Markdown table and PNG chart of a run, from the results dict (the documentation's blocks are
:mod:`benchmarks.lib.docs`).

``render_table`` is pure (tested); ``write_chart`` needs matplotlib (Agg backend, no display).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.lib.agreement import agreement_label
from benchmarks.lib.machine import one_line

GiB = 2**30
MiB = 2**20


def _seconds(side: dict) -> str:
    if "median_s" not in side:
        return "-"
    return f"{side['median_s']:.2f} [{side['min_s']:.2f}-{side['max_s']:.2f}]"


def _rate(side: dict, key: str) -> str:
    value = side.get(key)
    return f"{value:,.0f}" if value is not None else "-"


def _mib(side: dict, key: str) -> str:
    value = side.get(key)
    return f"{value / MiB:,.0f}" if value is not None else "-"


def _speedup(comparison: dict) -> str:
    value = comparison.get("speedup")
    return f"{value:.2f}x" if value is not None else "-"


def _extras(row: dict) -> str:
    parts = []
    if row.get("scaling_efficiency") is not None:
        parts.append(f"efficiency {row['scaling_efficiency']:.0%}")
    cand = row["candidate"]
    if cand.get("cache_hits") and cand.get("requests"):
        parts.append(f"hits {cand['cache_hits']}/{cand['requests']}")
    if cand.get("useful_tokens") and "computed_tokens" in cand:
        parts.append(f"computed {cand['computed_tokens'] / cand['useful_tokens']:.0%} of useful tokens")
    if cand.get("padded_tokens") and "computed_tokens" in cand:
        parts.append(f"padding {1 - cand['computed_tokens'] / cand['padded_tokens']:.0%}")
    if "load_s" in cand:
        parts.append(f"load {cand['load_s']:.1f}s")
    return "; ".join(parts) or "-"


HEADER = ("| scenario | baseline -> candidate | baseline s, median [min-max] | candidate s, median [min-max] "
          "| speedup | verdict | candidate tok/s | RSS growth MiB (base/cand) | agreement | notes |")
RULE = "|---|---|---|---|---|---|---|---|---|---|"


def table_rows(results: dict) -> list[str]:
    lines = []
    for name, outcome in results["scenarios"].items():
        for row in outcome.get("rows", []):
            base, cand = row["baseline"], row["candidate"]
            growth = f"{_mib(base, 'rss_growth_bytes')}/{_mib(cand, 'rss_growth_bytes')}"
            if "gpu_growth_bytes" in cand:
                growth += f" (GPU {_mib(base, 'gpu_growth_bytes')}/{_mib(cand, 'gpu_growth_bytes')})"
            lines.append(
                f"| {row['row']} | {row['baseline_label']} -> {row['candidate_label']} | {_seconds(base)} "
                f"| {_seconds(cand)} | {_speedup(row['comparison'])} | {row['comparison']['verdict']} "
                f"| {_rate(cand, 'tokens_per_s')} | {growth} | {agreement_label(row.get('agreement'))} | {_extras(row)} |"
            )
    return lines


def render_table(results: dict) -> str:
    """The markdown summary: header with machine and load, the rows, then skipped/failed scenarios."""
    machine = results["machine"]
    load_start, load_end = machine.get("load_average_at_start"), results.get("load_average_at_end")
    head = [
        f"Suite `{results['suite']}`, {results['started_utc']} UTC, {results['wall_s']:.0f} s in all; "
        f"model `{results['model']}`, {results['repetitions']} measured repetitions per side after a warm-up.",
        f"Machine: {one_line(machine)}.",
        f"Load average (1/5/15 min) at start {load_start}, at end {load_end}.",
        "",
        HEADER,
        RULE,
    ]
    tail = [""]
    for name, outcome in results["scenarios"].items():
        if outcome["status"] != "ok":  # the first line: a child's failure carries its log's tail
            tail.append(f"- `{name}` {outcome['status']}: {(outcome['reason'] or '').splitlines()[0] if outcome['reason'] else ''}")
        for note in outcome.get("notes", []):
            first_line = note.splitlines()[0] if note else ""
            tail.append(f"- `{name}` note: {first_line}")
    legend = ("Speedup = baseline median / candidate median; called faster/slower only when the "
              "repetitions do not overlap (candidate's worst beats baseline's best), else within noise.")
    figures = []
    for name, outcome in results["scenarios"].items():
        for figure, text in (outcome.get("figures") or {}).items():
            figures += ["", f"`{name}` {figure}:", "", "```", text.rstrip(), "```"]
    return "\n".join(head + table_rows(results) + tail + ["", legend] + figures) + "\n"


def chart_points(results: dict) -> list[dict]:
    points = []
    for outcome in results["scenarios"].values():
        for row in outcome.get("rows", []):
            comparison = row["comparison"]
            if comparison.get("speedup"):
                points.append({"label": row["row"], **comparison})
    return points


def write_chart(results: dict, path: Path) -> Path | None:
    """Horizontal bars of median speedups with min/max whiskers, coloured by verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (used through matplotlib.ticker below)

    points = chart_points(results)
    if not points:  # still leave a PNG, saying why it is empty
        fig, ax = plt.subplots(figsize=(8, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"suite {results['suite']}: no comparison ran (see table.md)", ha="center", va="center")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
    colors = {"faster": "#2a9d50", "slower": "#c0392b"}
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(points) + 1.6))
    ys = list(range(len(points)))[::-1]
    values = [p["speedup"] for p in points]
    low = [p["speedup"] - p["speedup_low"] for p in points]
    high = [p["speedup_high"] - p["speedup"] for p in points]
    # bars grow from 1x: right of the line is faster, left is slower; log scale keeps 2x and 0.5x alike
    ax.barh(ys, [v - 1.0 for v in values], left=1.0, xerr=[low, high],
            color=[colors.get(p["verdict"], "#999999") for p in points], capsize=3)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(ys, [f"{p['label']} ({p['verdict']})" for p in points], fontsize=8)
    ax.set_xscale("log")
    lo = min(min(p["speedup_low"] for p in points), 1.0) / 1.25
    hi = max(max(p["speedup_high"] for p in points), 1.0) * 1.25
    ax.set_xlim(lo, hi)
    ax.set_xticks([t for t in (0.1, 0.25, 0.5, 1, 2, 4, 10, 25, 100) if lo <= t <= hi])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for y, p in zip(ys, points):
        ax.text(p["speedup"], y + 0.3, f" {p['speedup']:.2f}x", fontsize=7, va="bottom")
    ax.set_xlabel("speedup of candidate over baseline (median; whiskers: worst/best pairing)")
    ax.set_title(f"lm-eval-ext vs stock, suite {results['suite']} ({results['started_utc']} UTC)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
