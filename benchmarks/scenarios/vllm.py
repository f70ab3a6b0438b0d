"""Scenarios on vLLM: stock ``vllm`` against ``vllm_ext`` in process and data parallel
(:mod:`benchmarks.lib.compare`), and what the prefix cache can save (:mod:`benchmarks.lib.vllm_cost`).

Each checks that vLLM imports (in this interpreter, or ``BENCH_VLLM_PYTHON``'s) and raises
:class:`Skip` with the reason when it does not.
"""

from __future__ import annotations

import json
import os
import sys

from benchmarks.lib import compare, real_tasks
from benchmarks.lib.compare import Comparison, Group
from benchmarks.lib.rows import load_plus_eval_time, make_row
from benchmarks.lib.scenarios import Context, Skip, module_available, result, scenario
from benchmarks.lib.stats import speedup_verdict, summarize
from benchmarks.lib.vllm_cost import SHAPE_ALIASES
from benchmarks.lib.vllm_mc_shapes import SHAPES

VLLM_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo",
    "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    # Not "1" (the workers' default): stock vllm with batch_size=auto asks vLLM for a progress bar,
    # and vLLM 0.32 divides tokens by that bar's elapsed time, which a disabled bar reports as 0
    # (ZeroDivisionError in LLM._run_engine). An empty value leaves tqdm enabled.
    "TQDM_DISABLE": "",
}
#: What stock's Ray data parallel needs on a machine without GPUs (docs/upstream.md).
STOCK_RAY_ENV = {
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
}
SHIPPED = ["ext_arith_mc", "ext_copy_gen", "ext_prose_rolling"]


def _max_model_len(model_path, cap_tokens: int = 2048) -> int:
    config = json.loads((model_path / "config.json").read_text())
    return min(cap_tokens, int(config.get("max_position_embeddings") or cap_tokens))


def vllm_impl(ctx: Context, model: str, data_parallel_size: int = 1) -> dict:
    """A worker implementation of stock ``vllm`` or ``vllm_ext`` (request cache off) on the suite's model."""
    args = f"pretrained={ctx.model_path},dtype={ctx.suite.dtype},max_model_len={_max_model_len(ctx.model_path)}"
    if not ctx.use_gpu:
        args += ",enforce_eager=True"
    if data_parallel_size > 1:
        args += f",data_parallel_size={data_parallel_size}"
    extra = ctx.ext_args(model) if model == "vllm_ext" else ""
    args += f",{extra}" if extra else ""
    return {"model": model, "model_args": args, "batch_size": "auto", "device": ctx.suite.device}


def vllm_python() -> str | None:
    """Interpreter for vLLM scenarios: ``BENCH_VLLM_PYTHON`` (a venv with vllm-cpu), else this one."""
    return os.environ.get("BENCH_VLLM_PYTHON") or None


def require_vllm() -> None:
    if not module_available("vllm", vllm_python()):
        where = vllm_python() or sys.executable
        raise Skip(f"vLLM is not installed for {where} (CPU: vllm-cpu, see docs/upstream.md; "
                   "BENCH_VLLM_PYTHON=/path/to/venv/bin/python points at another venv)")


def vllm_env(ctx: Context, name: str) -> dict:
    """vLLM's CPU settings, with its temporary files and sockets in the run's scratch folder."""
    scratch = ctx.work_dir / f"{name}-tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    return VLLM_ENV | {"TMPDIR": str(scratch), "VLLM_RPC_BASE_PATH": str(scratch)}


@scenario("vllm", "stock vllm vs vllm_ext, in-process (TP 1)")
def vllm_in_process(ctx: Context) -> dict:
    require_vllm()
    tasks, limit = ["ext_arith_mc", "ext_copy_gen", "ext_prose_rolling"], ctx.limit("vllm")
    comparison = Comparison("vllm", {"stock": vllm_impl(ctx, "vllm"), "ext": vllm_impl(ctx, "vllm_ext")},
                            [Group("", tuple(tasks), limit)], ctx.include_path(), stock=("stock",), candidate="ext",
                            env=vllm_env(ctx, "vllm"), python=vllm_python())
    merged = compare.run(ctx, comparison)
    rows = [make_row("vllm in-process, shipped tasks (whole evaluation)", merged.get("steps", []),
                     baseline=("stock", ""), candidate=("ext", ""), labels=("stock vllm", "vllm_ext"), tasks=tasks,
                     key="shipped")]
    return result(rows, {"vllm": merged}, {"tasks": tasks, "limit": limit, "impls": comparison.impls})


def vllm_tasks(ctx: Context, which: str) -> tuple[list[str], list[str]]:
    """(tasks, include path): ``shipped`` (tasks/), or lm-eval's own ``arc`` (ARC-Easy 0-shot),
    ``mmlu`` (5-shot, :data:`~benchmarks.lib.real_tasks.VLLM_MMLU_SUBJECTS`) or both (``mc``) over
    ``../shared/data``."""
    if which == "shipped":
        return SHIPPED, ctx.include_path()
    if ctx.data_dir is None or not real_tasks.has_multiple_choice(ctx.data_dir):
        raise Skip(f"--tasks {which} needs ../shared/data (arc_easy/, mmlu/) or BENCH_DATA_DIR")
    subjects = real_tasks.VLLM_MMLU_SUBJECTS
    mmlu = [real_tasks.mmlu_task(s) for s in subjects]
    tasks = {"arc": [real_tasks.ARC], "mmlu": mmlu, "mc": [real_tasks.ARC, *mmlu]}.get(which)
    if tasks is None:
        raise Skip(f"compare-vllm --tasks {which!r}: choose from shipped, arc, mmlu, mc")
    return tasks, [str(real_tasks.write_tasks(ctx.data_dir, ctx.work_dir / "compare-vllm-tasks", subjects))]


WHAT = {"shipped": "shipped tasks", "arc": "ARC-Easy 0-shot", "mmlu": "MMLU 5-shot", "mc": "ARC-Easy 0-shot + MMLU 5-shot"}


@scenario("compare-vllm", "stock vllm vs vllm_ext, each run a fresh process (model construction + evaluation): "
          "data parallel 2 (stock: Ray, engines rebuilt per request type; vllm_ext: persistent replicas)",
          options=("tasks", "limit", "data_parallel_size"))
def compare_vllm(ctx: Context) -> dict:
    require_vllm()
    size, python = int(ctx.option("data_parallel_size", 2)), vllm_python()
    if (len(ctx.machine["gpus"]) if ctx.use_gpu else ctx.num_cores) < size:
        raise Skip(f"data parallel {size} needs {size} {'GPUs' if ctx.use_gpu else 'CPU cores'}")
    if size > 1 and not module_available("ray", python):
        raise Skip("stock vllm data parallel needs ray (`make bench-vllm` installs it)")
    groups, include = [], []
    for which in str(ctx.option("tasks", "shipped")).split(","):  # one row each: shipped, arc, mmlu, mc
        tasks, paths = vllm_tasks(ctx, which)
        groups.append(Group(which, tuple(tasks), ctx.limit("compare-vllm", which)))
        include += [p for p in paths if p not in include]
    # stock asks Ray for one GPU per replica (num_gpus=tensor_parallel_size); pretend they exist
    ray = STOCK_RAY_ENV | {"RAY_OVERRIDE_RESOURCES": json.dumps({"GPU": size})} if size > 1 else {}
    comparison = Comparison("compare-vllm", {"vllm": vllm_impl(ctx, "vllm", size),
                                             "vllm_ext": vllm_impl(ctx, "vllm_ext", size)},
                            groups, include, stock=("vllm",), candidate="vllm_ext", env=vllm_env(ctx, "compare-vllm"),
                            env_for={"vllm": ray}, python=python, fresh_process_per_run=True)
    merged = compare.run(ctx, comparison)
    steps = merged.get("steps", [])
    how = ": Ray per request type vs persistent replicas" if size > 1 else ""
    rows, notes = [], ["time = model construction + evaluation, each run in a fresh process"]
    for group in groups:
        sides = {"baseline": ("vllm", group.prefix), "candidate": ("vllm_ext", group.prefix)}
        rows.append(make_row(f"vllm DP {size}, {WHAT[group.key]}{how}", steps, **sides,
                             labels=(f"stock vllm DP{size}", f"vllm_ext DP{size}"), timing=load_plus_eval_time,
                             tasks=list(group.tasks), key=group.key))
        eval_only = make_row("evaluation only", steps, **sides, tasks=list(group.tasks), check_agreement=False)
        if eval_only["comparison"]["speedup"]:
            notes.append(f"{group.key}: evaluation only (engines built): {eval_only['comparison']['speedup']:.2f}x "
                         f"({eval_only['comparison']['verdict']})")
    starts = {v: sorted({s["engine_starts"] for s in steps if s["impl"] == v and "engine_starts" in s})
              for v in comparison.impls}
    notes.append(f"engine starts per run: stock vllm {starts['vllm']}, vllm_ext {starts['vllm_ext']}")
    config = {"tasks": {g.key: list(g.tasks) for g in groups}, "limits": {g.key: g.limit for g in groups},
              "data_parallel_size": size}
    return result(rows, {"compare-vllm": merged}, config, notes)


@scenario("vllm-block-bound", "vLLM prefix cache by arithmetic: prompt tokens stock vllm computes vs the fewest any "
          "scorer computes, per KV block size (task shapes of vllm_mc_shapes; arc, mmlu: ARC-Easy 0-shot, MMLU 5-shot)",
          options=("tasks", "limit", "block_sizes"))
def vllm_block_bound(ctx: Context) -> dict:
    if ctx.data_dir is None or not real_tasks.has_multiple_choice(ctx.data_dir):
        raise Skip("needs ../shared/data (arc_easy/, mmlu/) or BENCH_DATA_DIR")
    require_vllm()
    block_sizes = list(ctx.sizes("block_sizes", (128, 32, 16, 8)))
    figures, runs = {}, {}
    for suite in str(ctx.option("tasks", "arc,mmlu")).split(","):
        limit = ctx.limit("vllm-block-bound", suite, default=SHAPES[SHAPE_ALIASES.get(suite, suite)].default_limit)
        runs[suite] = ctx.run_function(f"vllm-block-bound-{suite}", "benchmarks.lib.vllm_cost:block_bound",
                                       {"model": str(ctx.model_path), "data_dir": str(ctx.data_dir), "suite": suite,
                                        "limit": limit, "block_sizes": block_sizes,
                                        "task_dir": str(ctx.work_dir / f"block-bound-{suite}")},
                                       env=vllm_env(ctx, "vllm-block-bound"), python=vllm_python())
        figures[suite] = "\n".join(runs[suite]["lines"])
    return {"runs": runs, "figures": figures, "config": {"block_sizes": block_sizes}}


def _pass_side(passes: list[dict]) -> dict:
    times = [p["wall_s"] for p in passes]
    spread = summarize(times)
    return {"times_s": times, "repetitions": len(times), "median_s": spread.median, "min_s": spread.min,
            "max_s": spread.max, "relative_spread": spread.relative_spread,
            "computed_prompt_tokens": passes[0]["computed_prompt_tokens"],
            "cached_prompt_tokens": passes[0]["cached_prompt_tokens"]}


@scenario("vllm-prefix-cache-cost", "what vLLM's prefix-cache skip for prompt logprobs costs on multiple choice "
          "(ext_arith_mc on one engine: with prompt logprobs vs prefix-cached)", options=("limit",))
def vllm_prefix_cache_cost(ctx: Context) -> dict:
    require_vllm()
    run = ctx.run_function("vllm-prefix-cache-cost", "benchmarks.lib.vllm_cost:prefix_cache_cost",
                           {"model": str(ctx.model_path), "limit": ctx.limit("vllm-prefix-cache-cost"),
                            "repetitions": ctx.suite.repetitions, "dtype": ctx.suite.dtype},
                           env=vllm_env(ctx, "vllm-prefix-cache-cost"), python=vllm_python())
    base, cand = _pass_side(run["passes"]["with_prompt_logprobs"]), _pass_side(run["passes"]["prefix_cached"])
    row = {"row": f"vllm multiple choice ({run['requests']} requests): prompt logprobs vs prefix-cached prompts",
           "key": "ext_arith_mc", "baseline_label": "prompt logprobs", "candidate_label": "prefix cached",
           "baseline": base, "candidate": cand, "comparison": speedup_verdict(base["times_s"], cand["times_s"])}
    notes = [f"prompt tokens computed: {base['computed_prompt_tokens']} with prompt logprobs, "
             f"{cand['computed_prompt_tokens']} prefix-cached ({cand['cached_prompt_tokens']} from the cache)"]
    return {"rows": [row], "runs": {"vllm-prefix-cache-cost": run}, "notes": notes}
