"""Scenarios on the transformers backend over the shipped tasks: stock ``hf`` against ``hf_ext``,
same model, same data, one worker process, runs interleaved (:mod:`benchmarks.lib.compare`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from benchmarks.lib import compare, gsm8k
from benchmarks.lib.compare import EXT, Comparison, Group
from benchmarks.lib.rows import load_plus_eval_time, make_row, request_type_time
from benchmarks.lib.scenarios import ROOT, Context, Skip, result, scenario
from benchmarks.lib.stats import interleaved_order

SUITE_TASKS = {
    "ext_arith_mc": ("loglikelihood", "hf scoring, multiple choice (ext_arith_mc)"),
    "ext_prose_rolling": ("loglikelihood_rolling", "hf scoring, rolling (ext_prose_rolling)"),
    "ext_copy_gen": ("generate_until", "hf generation (ext_copy_gen)"),
}
LABELS = ("stock hf", "hf_ext")


def stock_vs_ext(ctx: Context, name: str, tasks: list[str], limit: int | None, include: list[str], *,
                 num_processes: int = 1, warmup_tasks: tuple[str, ...] | None = None) -> Comparison:
    """Stock ``hf`` at the suite's batch size against ``hf_ext``'s defaults, one group of tasks."""
    return Comparison(name=name, impls={"stock": ctx.hf_impl("hf"), "ext": ctx.hf_impl("hf_ext")},
                      groups=[Group("", tuple(tasks), limit)], include_path=include, stock=("stock",),
                      candidate="ext", num_processes=num_processes, warmup_tasks=warmup_tasks)


@scenario("hf-suite", "stock hf vs hf_ext on the shipped tasks: multiple choice, rolling, generation")
def hf_suite(ctx: Context) -> dict:
    tasks, limit = list(SUITE_TASKS), ctx.limit("hf-suite")
    comparison = stock_vs_ext(ctx, "hf-suite", tasks, limit, ctx.include_path())
    merged = compare.run(ctx, comparison)
    steps = merged.get("steps", [])
    rows = [make_row(title, steps, baseline=("stock", ""), candidate=("ext", ""), labels=LABELS,
                     timing=request_type_time(request_type), tasks=[task], key=task)
            for task, (request_type, title) in SUITE_TASKS.items()]
    rows.append(make_row("hf, all three tasks (whole evaluation)", steps, baseline=("stock", ""),
                         candidate=("ext", ""), labels=LABELS, tasks=tasks, key="all"))
    config = {"tasks": tasks, "limit": limit, "impls": comparison.impls,
              "timing": "per request type (wrapped LM methods)"}
    return result(rows, {"hf-suite": merged}, config)


def _tag(steps: list[dict], suffix: str) -> list[dict]:
    return [s | {"side": f"{s['side']}@{suffix}"} for s in steps]


@scenario("data-parallel", "data parallel: 1 vs 2 processes (gloo on CPU, NCCL on GPUs), scaling efficiency")
def data_parallel(ctx: Context) -> dict:
    num_gpus = len(ctx.machine["gpus"])
    if ctx.use_gpu and num_gpus < 2:
        raise Skip(f"data parallel on GPUs needs 2 GPUs; this machine has {num_gpus}")
    if not ctx.use_gpu and ctx.num_cores < 2:
        raise Skip(f"data parallel on CPU needs 2 cores; this machine has {ctx.num_cores}")
    tasks, limit = ["ext_arith_mc"], ctx.limit("data-parallel")
    layouts = {"dp1": 1, "dp2": 2}
    sides = {"dp1": ("stock", "ext"), "dp2": ("stock", "ext") if ctx.suite.stock_data_parallel else ("ext",)}
    # alternating launches (1 2, 2 1, ...), one repetition each, let drift in the machine's load hit
    # both layouts as stock and ext alternate within a launch; one launch per layout is cheaper
    alternate = ctx.suite.alternate_launches
    per_launch = dataclasses.replace(ctx.suite, repetitions=1 if alternate else ctx.suite.repetitions)
    launches = interleaved_order(list(layouts), ctx.suite.repetitions if alternate else 1)
    runs, steps = {}, []
    for rep, layout in launches:
        comparison = stock_vs_ext(ctx, f"{layout}-r{rep}", tasks, limit, ctx.include_path(),
                                  num_processes=layouts[layout])
        comparison.impls = {k: v for k, v in comparison.impls.items() if k in sides[layout]}
        runs[comparison.name] = compare.run(dataclasses.replace(ctx, suite=per_launch), comparison)
        launch_steps = runs[comparison.name].get("steps", [])
        steps += _tag([s | {"repetition": rep} for s in launch_steps] if alternate else launch_steps, layout)
    rows = [
        make_row("DP 2 vs 1 processes (hf_ext, ext_arith_mc)", steps, baseline=("ext@dp1", ""),
                 candidate=("ext@dp2", ""), labels=("hf_ext DP1", "hf_ext DP2"), tasks=tasks, num_processes=2,
                 key="ext-dp2-vs-dp1"),
        make_row("hf_ext DP 2 vs stock hf DP 1 (ext_arith_mc)", steps, baseline=("stock@dp1", ""),
                 candidate=("ext@dp2", ""), labels=("stock hf DP1", "hf_ext DP2"), tasks=tasks,
                 key="ext-dp2-vs-stock-dp1"),
    ]
    if ctx.suite.stock_data_parallel:
        rows.append(make_row("DP 2 vs 1 processes (stock hf, ext_arith_mc)", steps, baseline=("stock@dp1", ""),
                             candidate=("stock@dp2", ""), labels=("stock hf DP1", "stock hf DP2"), tasks=tasks,
                             num_processes=2, key="stock-dp2-vs-dp1"))
    notes = [("DP 1 and DP 2 launches alternate, one repetition (after a warm-up) per launch" if alternate else
              "one launch per layout, its repetitions (after a warm-up) interleaved stock/ext"),
             f"cores split evenly: {ctx.num_cores} threads at DP 1, {max(1, ctx.num_cores // 2)} per process at DP 2"]
    return result(rows, runs, {"tasks": tasks, "limit": limit}, notes)


@scenario("gsm8k", "GSM8K (lm-eval's own gsm8k task definition over ../shared/data): stock hf vs hf_ext")
def gsm8k_scenario(ctx: Context) -> dict:
    if ctx.data_dir is None or not (ctx.data_dir / "gsm8k" / "test.jsonl").exists():
        raise Skip("GSM8K data not found (looked for ../shared/data/gsm8k; set BENCH_DATA_DIR)")
    task_dir = gsm8k.write_local_task(ctx.data_dir / "gsm8k", ctx.work_dir / "gsm8k-task")
    limit = ctx.limit("gsm8k")
    comparison = stock_vs_ext(ctx, "gsm8k", [gsm8k.TASK_NAME], limit, ctx.include_path(task_dir),
                              warmup_tasks=("ext_copy_gen",))
    merged = compare.run(ctx, comparison)
    rows = [make_row(f"gsm8k generation, 5-shot, {limit or 'all'} docs", merged.get("steps", []),
                     baseline=("stock", ""), candidate=("ext", ""), labels=LABELS,
                     timing=request_type_time("generate_until"), tasks=[gsm8k.TASK_NAME], key=gsm8k.TASK_NAME)]
    config = {"task_yaml": str(task_dir / f"{gsm8k.TASK_NAME}.yaml"), "limit": limit, "impls": comparison.impls}
    return result(rows, {"gsm8k": merged}, config)


# ---- compare-hf: stock at several fixed batch sizes per task, its best against hf_ext ------------
SHIPPED = ("ext_arith_mc", "ext_copy_gen", "ext_prose_rolling")
GENERATION_TASKS = ("ext_copy_gen", gsm8k.TASK_NAME)
#: Stock batch_size=auto probes generation and rolling at the model's full max_length (SmolLM2:
#: 8192): measured >10 min and 15 GB RSS here, so it is only run for these
STOCK_AUTO_SAFE = ("ext_arith_mc",)
EXT_UNSHARED = "hf_ext unshared"
LONG_TASK = "ext_long_rolling"


def task_configurations(task: str, fixed_sizes, generation_fixed_sizes, stock_auto: bool,
                        unshared: bool) -> dict[str, dict | None]:
    """Configuration name -> (backend and model_args extras), or None where left out (PURE)."""
    sizes = generation_fixed_sizes if task in GENERATION_TASKS else fixed_sizes
    configs: dict[str, dict | None] = {f"hf batch_size={n}": {"backend": "hf", "batch_size": n} for n in sizes}
    configs["hf batch_size=auto"] = {"backend": "hf", "batch_size": "auto"} if stock_auto else None
    # request cache off: a repetition (or an earlier run) would otherwise read its answers
    configs[EXT] = {"backend": "hf_ext", "cache": "off"}
    if unshared:
        configs[EXT_UNSHARED] = {**configs[EXT], "share_contexts": "false"}
    return configs


def write_long_task(folder: Path, num_docs: int = 4, repeats: int = 3) -> Path:
    """A rolling-loglikelihood task whose documents are ~repeats x 5k tokens (SmolLM2 tokenizer)."""
    folder.mkdir(parents=True, exist_ok=True)
    paragraphs = [json.loads(line)["text"] for line in (ROOT / "tasks/data/prose_test.jsonl").open()]
    data = folder / "long_test.jsonl"
    with data.open("w") as handle:
        for i in range(num_docs):
            rotated = paragraphs[i:] + paragraphs[:i]
            handle.write(json.dumps({"text": " ".join(rotated * repeats)}) + "\n")
    (folder / f"{LONG_TASK}.yaml").write_text(
        f"task: {LONG_TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
        "metadata:\n  version: 1.0\n"
    )
    return folder


def efficiency_note(steps: list[dict], peak_tokens_per_s: float | None) -> str:
    """Useful tokens/s of unshared hf_ext scoring (ext_arith_mc) against the decoder's rate."""
    runs = [s for s in steps if s["impl"] == EXT_UNSHARED and s.get("measured", True) and "error" not in s]
    counters = [s.get("extension", {}).get("by_task", {}).get("ext_arith_mc", {}) for s in runs]
    pairs = [(c["useful_tokens"], c["wall_s"], s["eval_s"]) for c, s in zip(counters, runs, strict=True)
             if c.get("useful_tokens") and c.get("wall_s")]
    if not peak_tokens_per_s or not pairs:
        return ""
    useful, engine_s, eval_s = sorted(pairs, key=lambda p: p[2])[len(pairs) // 2]
    return (f"peak forward {peak_tokens_per_s:.0f} tok/s (decoder, 8 x 512); unshared scoring useful "
            f"{useful / engine_s:.0f} tok/s in batches ({useful / engine_s / peak_tokens_per_s:.0%} of peak), "
            f"{useful / eval_s:.0f} tok/s end to end ({useful / eval_s / peak_tokens_per_s:.0%})")


@scenario("compare-hf", "scoring engine: stock hf at fixed batch sizes (and auto where safe), its best vs hf_ext "
          "per task; peak forward and a long-context run in the notes",
          options=("tasks", "limit", "stock_sizes", "generation_sizes"))
def compare_hf(ctx: Context) -> dict:
    from benchmarks.scenarios.ceiling import decoder_rate

    has_gsm8k = ctx.data_dir is not None and (ctx.data_dir / "gsm8k" / "test.jsonl").exists()
    tasks = [t for t in str(ctx.option("tasks", ",".join(SHIPPED + ((gsm8k.TASK_NAME,) if has_gsm8k else ()))))
             .split(",") if t]
    include = ctx.include_path()
    if gsm8k.TASK_NAME in tasks:
        if not has_gsm8k:
            raise Skip("GSM8K data not found (../shared/data/gsm8k; set BENCH_DATA_DIR)")
        include.append(str(gsm8k.write_local_task(ctx.data_dir / "gsm8k", ctx.work_dir / "compare-hf-tasks")))
    fixed, gen = ctx.sizes("stock_sizes", (8, 16, 32)), ctx.sizes("generation_sizes", (1, 8, 16))
    configs = {task: task_configurations(task, fixed, gen, task in STOCK_AUTO_SAFE, task == "ext_arith_mc")
               for task in tasks}
    all_configs = {name: c for per_task in configs.values() for name, c in per_task.items() if c is not None}
    groups = [Group(task, (task,), ctx.limit("compare-hf", "gsm8k", default=8) if task == gsm8k.TASK_NAME
                    else ctx.limit("compare-hf"), tuple(n for n, c in configs[task].items() if c is not None))
              for task in tasks]
    comparison = Comparison("compare-hf", compare.hf_impls(ctx, all_configs), groups, include,
                            stock=tuple(n for n in all_configs if n.startswith("hf ")), candidate=EXT,
                            fresh_model=("hf batch_size=auto",))
    merged = compare.run(ctx, comparison)
    rows = compare.best_rows(comparison, merged, lambda g: f"compare_hf {g.key} ({g.limit or 'all'} docs): "
                             "stock's best vs hf_ext")
    notes = [compare.medians_note(row) for row in rows]
    notes += [f"{task}: {name} left out: stock auto probes at max_length (docs/upstream.md: >10 min, 15 GB RSS "
              "on this CPU)" for task in tasks for name in compare.left_out(configs[task])]
    peak = decoder_rate(ctx, "compare-hf-peak", "8x512")
    notes.append(efficiency_note(merged.get("steps", []), peak))
    runs = {"compare-hf": merged}
    long_docs = (ctx.options.get("limit") or {}).get("long", ctx.suite.limit("compare-hf-long"))  # not a plain --limit
    if long_docs:
        runs["long-context"] = long_context_run(ctx, long_docs)
        notes.append(long_context_note(runs["long-context"]))
    config = {"tasks": tasks, "limits": {g.key: g.limit for g in groups}, "repetitions": ctx.suite.repetitions}
    return result(rows, runs, config, [n for n in notes if n])


def long_context_run(ctx: Context, num_docs: int) -> dict:
    folder = write_long_task(ctx.work_dir / "long-task", num_docs=num_docs)
    plan = {"include_path": ctx.include_path(folder), "impls": {EXT: ctx.hf_impl("hf_ext")},
            "steps": [{"label": "long", "impl": EXT, "tasks": [LONG_TASK], "limit": None, "keep_outputs": False}]}
    return ctx.run("compare-hf-long", plan)


def long_context_note(run: dict) -> str:
    step = (run.get("steps") or [{}])[0]
    if "eval_s" not in step or "error" in step:
        return f"long context ({LONG_TASK}, hf_ext defaults): {step.get('error') or run.get('error', 'no result')}"
    return (f"long context ({LONG_TASK}, hf_ext defaults): ok {load_plus_eval_time(step):.1f} s, "
            f"peak RSS {step.get('peak_rss_bytes', 0) / 2**20:.0f} MiB")
