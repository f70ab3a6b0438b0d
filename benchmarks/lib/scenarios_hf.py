"""Scenarios on the transformers backend: stock ``hf`` against ``hf_ext``, same model, same data,
same worker process, runs interleaved."""

from __future__ import annotations

import dataclasses

from benchmarks.lib import gsm8k
from benchmarks.lib.rows import load_plus_eval_time, make_row, request_type_time
from benchmarks.lib.scenarios import Context, Skip, comparison_steps, failed_steps, scenario, strip_outputs
from benchmarks.lib.stats import interleaved_order

SUITE_TASKS = {
    "ext_arith_mc": ("loglikelihood", "hf scoring, multiple choice (ext_arith_mc)"),
    "ext_prose_rolling": ("loglikelihood_rolling", "hf scoring, rolling (ext_prose_rolling)"),
    "ext_copy_gen": ("generate_until", "hf generation (ext_copy_gen)"),
}
LABELS = ("stock hf", "hf_ext")


def _result(rows: list[dict], runs: dict, config: dict, notes: list[str] | None = None) -> dict:
    notes = list(notes or [])
    for name, merged in runs.items():
        notes += [f"{name}: {n}" for n in failed_steps(merged)]
    return {"rows": rows, "runs": {k: strip_outputs(v) for k, v in runs.items()}, "config": config, "notes": notes}


@scenario("hf-suite", "stock hf vs hf_ext on the shipped tasks: multiple choice, rolling, generation")
def hf_suite(ctx: Context) -> dict:
    tasks = list(SUITE_TASKS)
    impls = {"stock": ctx.hf_impl("hf"), "ext": ctx.hf_impl("hf_ext")}
    limit = ctx.suite.limit("hf-suite")
    plan = {"include_path": ctx.include_path(), "impls": impls,
            "steps": comparison_steps(list(impls), tasks, limit, ctx.suite)}
    merged = ctx.run("hf-suite", plan)
    steps = merged.get("steps", [])
    rows = [make_row(title, steps, baseline=("stock", ""), candidate=("ext", ""), labels=LABELS,
                     timing=request_type_time(request_type), tasks=[task])
            for task, (request_type, title) in SUITE_TASKS.items()]
    rows.append(make_row("hf, all three tasks (whole evaluation)", steps, baseline=("stock", ""),
                         candidate=("ext", ""), labels=LABELS, tasks=tasks))
    config = {"tasks": tasks, "limit": limit, "impls": impls, "timing": "per request type (wrapped LM methods)"}
    return _result(rows, {"hf-suite": merged}, config)


def _tag(steps: list[dict], suffix: str) -> list[dict]:
    return [s | {"side": f"{s['side']}@{suffix}"} for s in steps]


@scenario("data-parallel", "data parallel: 1 vs 2 processes (gloo on CPU, NCCL on GPUs), scaling efficiency")
def data_parallel(ctx: Context) -> dict:
    num_gpus = len(ctx.machine["gpus"])
    if ctx.use_gpu and num_gpus < 2:
        raise Skip(f"data parallel on GPUs needs 2 GPUs; this machine has {num_gpus}")
    if not ctx.use_gpu and ctx.num_cores < 2:
        raise Skip(f"data parallel on CPU needs 2 cores; this machine has {ctx.num_cores}")
    tasks, limit = ["ext_arith_mc"], ctx.suite.limit("data-parallel")
    impls = {"stock": ctx.hf_impl("hf"), "ext": ctx.hf_impl("hf_ext")}
    sides = {"dp1": list(impls), "dp2": list(impls) if ctx.suite.stock_data_parallel else ["ext"]}
    one_rep = dataclasses.replace(ctx.suite, repetitions=1)
    runs, steps = {}, []
    # DP 1 and DP 2 need separate launches; alternating them (1 2, 2 1, ...) one repetition per
    # launch lets drift in the machine's load hit both, as within a launch stock and ext alternate
    for rep, layout in interleaved_order(list(sides), ctx.suite.repetitions):
        size = 2 if layout == "dp2" else 1
        plan = {"include_path": ctx.include_path(), "impls": impls,
                "steps": comparison_steps(sides[layout], tasks, limit, one_rep, num_processes=size)}
        name = f"{layout}-r{rep}"
        runs[name] = ctx.run(name, plan, num_processes=size)
        steps += [s | {"repetition": rep} for s in _tag(runs[name].get("steps", []), layout)]
    rows = [
        make_row("DP 2 vs 1 processes (hf_ext, ext_arith_mc)", steps, baseline=("ext@dp1", ""),
                 candidate=("ext@dp2", ""), labels=("hf_ext DP1", "hf_ext DP2"), tasks=tasks, num_processes=2),
        make_row("hf_ext DP 2 vs stock hf DP 1 (ext_arith_mc)", steps, baseline=("stock@dp1", ""),
                 candidate=("ext@dp2", ""), labels=("stock hf DP1", "hf_ext DP2"), tasks=tasks),
    ]
    if ctx.suite.stock_data_parallel:
        rows.append(make_row("DP 2 vs 1 processes (stock hf, ext_arith_mc)", steps, baseline=("stock@dp1", ""),
                             candidate=("stock@dp2", ""), labels=("stock hf DP1", "stock hf DP2"), tasks=tasks,
                             num_processes=2))
    notes = ["DP 1 and DP 2 launches alternate, one repetition (after a warm-up) per launch",
             f"cores split evenly: {ctx.num_cores} threads at DP 1, {max(1, ctx.num_cores // 2)} per process at DP 2"]
    return _result(rows, runs, {"tasks": tasks, "limit": limit, "impls": impls}, notes)


def _cache_steps(ctx: Context, tasks: list[str], limit: int | None, ext_native: bool) -> tuple[dict, list[dict]]:
    """Per repetition and side: a cold run into a fresh cache, then a warm run over it, each with a
    freshly built model (a fully cached run may skip loading weights, so load time counts)."""
    impls = {"stock": ctx.hf_impl("hf"), "ext-warmup": ctx.hf_impl("hf_ext", "cache=off" if ext_native else "")}
    steps = [{"label": f"warmup-{i}", "impl": i, "tasks": tasks, "limit": ctx.suite.warmup_limit,
              "measured": False, "keep_outputs": False} for i in impls]
    cache_root = ctx.work_dir / "cache-dirs"
    for rep in range(ctx.suite.repetitions):
        sides = ["stock", "ext"] if rep % 2 == 0 else ["ext", "stock"]
        ext_impl = f"ext-r{rep}"
        ext_dir = cache_root / f"ext-r{rep}"
        impls[ext_impl] = ctx.hf_impl("hf_ext", f"cache=readwrite,cache_dir={ext_dir}" if ext_native else "")
        for side in sides:
            impl = "stock" if side == "stock" else ext_impl
            use_cache = None if (side == "ext" and ext_native) else str(cache_root / f"{side}-r{rep}" / "lm_cache")
            for phase in ("cold", "warm"):
                steps.append({"label": f"{side}-{phase}-r{rep}", "impl": impl, "side": f"{side}-{phase}",
                              "tasks": tasks, "limit": limit, "use_cache": use_cache, "fresh_model": True,
                              "repetition": rep})
    return impls, steps


@scenario("cache", "cold vs warm request cache: lm-eval's --use_cache (stock) and hf_ext's cache")
def cache(ctx: Context) -> dict:
    tasks, limit = list(SUITE_TASKS), ctx.suite.limit("cache")
    ext_native = {"cache", "cache_dir"} <= ctx.ext_fields()
    impls, steps = _cache_steps(ctx, tasks, limit, ext_native)
    merged = ctx.run("cache", {"include_path": ctx.include_path(), "impls": impls, "steps": steps})
    steps = merged.get("steps", [])
    ext_name = "hf_ext cache" if ext_native else "hf_ext + lm-eval --use_cache"
    timing = load_plus_eval_time
    rows = [
        make_row("cache warm vs cold (stock hf, --use_cache)", steps, baseline=("stock-cold", ""),
                 candidate=("stock-warm", ""), labels=("stock cold", "stock warm"), timing=timing, tasks=tasks),
        make_row(f"cache warm vs cold ({ext_name})", steps, baseline=("ext-cold", ""),
                 candidate=("ext-warm", ""), labels=("hf_ext cold", "hf_ext warm"), timing=timing, tasks=tasks),
        make_row("warm cache: hf_ext vs stock hf", steps, baseline=("stock-warm", ""), candidate=("ext-warm", ""),
                 labels=("stock warm", "hf_ext warm"), timing=timing, tasks=tasks),
    ]
    notes = [] if ext_native else ["hf_ext has no cache/cache_dir model_args in this checkout (issue 5 not "
                                   "merged): its side uses lm-eval's own --use_cache"]
    notes.append("time = model load + evaluation, each run with a freshly built model")
    return _result(rows, {"cache": merged}, {"tasks": tasks, "limit": limit, "impls": impls}, notes)


@scenario("gsm8k", "GSM8K (lm-eval's own gsm8k task definition over ../shared/data): stock hf vs hf_ext")
def gsm8k_scenario(ctx: Context) -> dict:
    if ctx.data_dir is None or not (ctx.data_dir / "gsm8k" / "test.jsonl").exists():
        raise Skip("GSM8K data not found (looked for ../shared/data/gsm8k; set BENCH_DATA_DIR)")
    task_dir = gsm8k.write_local_task(ctx.data_dir / "gsm8k", ctx.work_dir / "gsm8k-task")
    impls = {"stock": ctx.hf_impl("hf"), "ext": ctx.hf_impl("hf_ext")}
    limit = ctx.suite.limit("gsm8k")
    plan = {"include_path": ctx.include_path(task_dir), "impls": impls,
            "steps": comparison_steps(list(impls), [gsm8k.TASK_NAME], limit, ctx.suite,
                                      warmup_tasks=["ext_copy_gen"])}
    merged = ctx.run("gsm8k", plan)
    rows = [make_row(f"gsm8k generation, 5-shot, {limit or 'all'} docs", merged.get("steps", []),
                     baseline=("stock", ""), candidate=("ext", ""), labels=LABELS,
                     timing=request_type_time("generate_until"), tasks=[gsm8k.TASK_NAME])]
    config = {"task_yaml": str(task_dir / f"{gsm8k.TASK_NAME}.yaml"), "limit": limit, "impls": impls}
    return _result(rows, {"gsm8k": merged}, config)
