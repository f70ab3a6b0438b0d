"""PURE: the bill as the terminal shows it: one row per task and request type, a total, the verdict.

Example (numbers made up)::

    estimate (measured on this machine; 1 replica):
      task                     type                   reqs  computed     stock  est. time              peak mem  cached
      arc_easy_local           loglikelihood            80     2,431     9,212  4.1 s (3.3-5.1 s)       1.0 GiB       0
      gsm8k_local              generate_until            4     3,180     3,214  21.3 s (9.7-52.4 s)     2.1 GiB       0
      total                                                                     25.4 s (13.0-57.5 s)
    rates: loglikelihood 590 tokens/s (measured: ...)
    time limit 2h: fits
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lm_eval_ext.units import format_bytes, format_duration


def _span(seconds: float, low: float, high: float) -> str:
    return f"{format_duration(seconds)} ({format_duration(low)}-{format_duration(high)})"


def render_bill(bill: Mapping[str, Any]) -> str:
    sources = sorted({t["source"] for t in bill["tasks"].values()})
    lines = [f"estimate ({', '.join(sources) or 'nothing to compute'}; {bill['num_replicas']} replica(s)):",
             f"  {'task':<28} {'type':<22} {'reqs':>6} {'computed':>10} {'stock':>10}  {'est. time':<26}"
             f" {'peak mem':>9} {'cached':>7}"]
    for task, row in sorted(bill["tasks"].items()):
        for kind, count in sorted(row["request_types"].items()):
            only = len(row["request_types"]) == 1
            seconds = _span(row["seconds"], row["seconds_low"], row["seconds_high"]) if only else ""
            computed = (f"{round(count['computed_tokens']):,}" if kind != "generate_until"
                        else f"~{round(count['computed_tokens']):,}")
            lines.append(f"  {task[:28]:<28} {kind:<22} {count['num_requests']:>6} {computed:>10} "
                         f"{round(count['stock_tokens']):>10,}  {seconds:<26} "
                         f"{format_bytes(row['peak_memory_bytes']):>9} {row['cache_hits']:>7}")
        if len(row["request_types"]) > 1:
            lines.append(f"  {'':<28} {'(task total)':<22} {row['requests']:>6} {row['computed_tokens']:>10,} "
                         f"{row['stock_tokens']:>10,}  {_span(row['seconds'], row['seconds_low'], row['seconds_high'])}")
    lines.append(f"  {'total':<28} {'':<22} {'':>6} {'':>10} {'':>10}  "
                 f"{_span(bill['total_seconds'], bill['total_seconds_low'], bill['total_seconds_high'])}")
    for kind, rates in sorted(bill["rates"].items()):
        decode = (f", decode {rates['decode_tokens_per_s']:,.0f} tokens/s" if rates["decode_tokens_per_s"] else "")
        lines.append(f"rates: {kind} {rates['prefill_tokens_per_s']:,.0f} tokens/s{decode} ({rates['source']}: "
                     f"{rates['note']})")
    if any(kind == "generate_until" for row in bill["tasks"].values() for kind in row["request_types"]):
        lines.append("generation: ~ at the expected length (reference answers or this model's history); "
                     "the range spans 1 to max_gen_toks tokens per request")
    if "time_limit_s" in bill:
        lines.append(f"time limit {format_duration(bill['time_limit_s'])}: {bill['verdict']}")
        lines += [f"  - would fit: {s}" for s in bill["suggestions"]]
    return "\n".join(lines) + "\n"
