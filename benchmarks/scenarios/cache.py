"""Cold vs warm request cache (:mod:`benchmarks.lib.coldwarm`): stock with lm-eval's ``--use_cache``
against ``hf_ext``'s own cache on the shipped tasks, and ``make demo``'s evaluation."""

from __future__ import annotations

import shutil

from benchmarks.lib import coldwarm
from benchmarks.lib.coldwarm import Side
from benchmarks.lib.rows import load_plus_eval_time, make_row
from benchmarks.lib.scenarios import Context, Skip, result, scenario
from benchmarks.scenarios.hf import SUITE_TASKS


def _run(ctx: Context, name: str, sides: list[Side], tasks: list[str], limit: int | None, floor: bool = False) -> dict:
    # a reused output folder (make bench writes benchmarks/results/<suite>/) still holds the previous
    # run's caches: left there, every "cold" run read them (seen as stock cold 0.82 s vs warm 0.92 s)
    shutil.rmtree(ctx.work_dir / f"{name}-dirs", ignore_errors=True)
    plan = coldwarm.plan(sides, tasks, limit, repetitions=ctx.suite.repetitions, warmup_limit=ctx.suite.warmup_limit,
                         cache_root=ctx.work_dir / f"{name}-dirs", floor=floor)
    return ctx.run(name, {"include_path": ctx.include_path(), **plan})


@scenario("cache", "cold vs warm request cache: lm-eval's --use_cache (stock) and hf_ext's cache")
def cache(ctx: Context) -> dict:
    tasks, limit = list(SUITE_TASKS), ctx.limit("cache")
    sides = [Side("stock", ctx.hf_impl("hf"), native=False), Side("ext", ctx.hf_impl("hf_ext"), native=True)]
    merged = _run(ctx, "cache", sides, tasks, limit)
    steps = merged.get("steps", [])
    rows = [
        coldwarm.warm_vs_cold("cache warm vs cold (stock hf, --use_cache)", steps, "stock",
                              ("stock cold", "stock warm"), tasks, "stock"),
        coldwarm.warm_vs_cold("cache warm vs cold (hf_ext cache)", steps, "ext", ("hf_ext cold", "hf_ext warm"),
                              tasks, "ext"),
        make_row("warm cache: hf_ext vs stock hf", steps, baseline=("stock-warm", ""), candidate=("ext-warm", ""),
                 labels=("stock warm", "hf_ext warm"), timing=load_plus_eval_time, tasks=tasks, key="warm"),
    ]
    notes = ["time = model load + evaluation, each run with a freshly built model"]
    return result(rows, {"cache": merged}, {"tasks": tasks, "limit": limit}, notes)


#: scripts/demo.py's evaluation: the whole ext_suite with hf_ext's defaults
DEMO_TASKS = ["ext_suite"]


@scenario("demo-cache", "make demo's evaluation, cold vs warm hf_ext request cache (fresh models)")
def demo_cache(ctx: Context) -> dict:
    if ctx.use_gpu:
        raise Skip("the demo's evaluation is a CPU job")
    limit = ctx.limit("demo-cache")
    merged = _run(ctx, "demo-cache", [Side("demo", ctx.hf_impl("hf_ext"), native=True)],
                  DEMO_TASKS, limit, floor=True)
    steps = merged.get("steps", [])
    row = coldwarm.warm_vs_cold(f"demo evaluation: warm vs cold hf_ext cache ({'whole' if limit is None else limit} "
                                "ext_suite)", steps, "demo", ("cold", "warm"), None, "demo")
    cold_s, warm_s = row["baseline"].get("median_s"), row["candidate"].get("median_s")
    notes = [f"warm/cold median time (model load + evaluation): {warm_s / cold_s:.1%}" if cold_s and warm_s else "",
             coldwarm.fast_path_note(steps, "demo"), coldwarm.floor_note(steps, cold_s)]
    return result([row], {"demo-cache": merged}, {"tasks": DEMO_TASKS, "limit": limit},
                  [n for n in notes if n])
