"""Scenarios that depend on pieces other engineers deliver: vLLM, the planner, and the per-backend
comparison scripts (``benchmarks/compare_hf.py``, ``benchmarks/compare_vllm.py``).

Each one checks that its piece exists and raises :class:`Skip` with the reason when it does not.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

from benchmarks.lib.rows import make_row
from benchmarks.lib.scenarios import ROOT, Context, Skip, comparison_steps, module_available, scenario
from benchmarks.lib.scenarios_hf import _result, _tag

VLLM_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo",
    "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    # Not "1" (the workers' default): stock vllm with batch_size=auto asks vLLM for a progress bar,
    # and vLLM 0.32 divides tokens by that bar's elapsed time, which a disabled bar reports as 0
    # (ZeroDivisionError in LLM._run_engine). An empty value leaves tqdm enabled.
    "TQDM_DISABLE": "",
}


def _max_model_len(model_path, cap_tokens: int = 2048) -> int:
    config = json.loads((model_path / "config.json").read_text())
    return min(cap_tokens, int(config.get("max_position_embeddings") or cap_tokens))


def _vllm_impl(ctx: Context, model: str) -> dict:
    args = f"pretrained={ctx.model_path},dtype={ctx.suite.dtype},max_model_len={_max_model_len(ctx.model_path)}"
    if not ctx.use_gpu:
        args += ",enforce_eager=True"
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


@scenario("vllm", "stock vllm vs vllm_ext, in-process (TP 1)")
def vllm_in_process(ctx: Context) -> dict:
    require_vllm()
    tasks, limit = ["ext_arith_mc", "ext_copy_gen", "ext_prose_rolling"], ctx.suite.limit("vllm")
    impls = {"stock": _vllm_impl(ctx, "vllm"), "ext": _vllm_impl(ctx, "vllm_ext")}
    scratch = ctx.work_dir / "vllm-tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    env = VLLM_ENV | {"TMPDIR": str(scratch), "VLLM_RPC_BASE_PATH": str(scratch)}
    plan = {"include_path": ctx.include_path(), "impls": impls,
            "steps": comparison_steps(list(impls), tasks, limit, ctx.suite)}
    merged = ctx.run("vllm", plan, env=env, python=vllm_python())
    rows = [make_row("vllm in-process, shipped tasks (whole evaluation)", merged.get("steps", []),
                     baseline=("stock", ""), candidate=("ext", ""), labels=("stock vllm", "vllm_ext"), tasks=tasks)]
    return _result(rows, {"vllm": merged}, {"tasks": tasks, "limit": limit, "impls": impls})


def planner_layouts(plan_json: dict) -> tuple[dict, list[dict]]:
    """(chosen, rejected) layouts from ``lm-eval-ext plan --json``; each needs ``data_parallel_size``.

    Accepts ``{"chosen"|"plan": {...}, "rejected"|"alternatives": [...]}`` or a flat chosen plan
    with a ``rejected`` list; raises :class:`Skip` on anything else.
    """
    chosen = plan_json.get("chosen") or plan_json.get("plan") or plan_json
    rejected = plan_json.get("rejected") or plan_json.get("alternatives") or chosen.get("rejected") or []
    layouts = [chosen, *rejected]
    if not all(isinstance(x, dict) and "data_parallel_size" in x for x in layouts):
        raise Skip(f"planner JSON not understood (top-level keys: {sorted(plan_json)}); "
                   "expected layouts with data_parallel_size")
    return chosen, rejected


def _planner_json(ctx: Context) -> dict:
    cmd = [sys.executable, "-m", "lm_eval_ext.cli", "plan", "--json", "--model", "hf_ext",
           "--model_args", f"pretrained={ctx.model_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    if proc.returncode != 0:
        raise Skip(f"lm-eval-ext plan --json failed ({proc.returncode}): {proc.stderr[-500:]}")
    return json.loads(proc.stdout)


@scenario("planner", "the planner's chosen layout vs each layout it rejected that this hardware can run")
def planner(ctx: Context) -> dict:
    if not module_available("lm_eval_ext.commands.plan"):
        raise Skip("planner not in this checkout (lm_eval_ext.commands.plan missing; issue 'planner')")
    plan_json = _planner_json(ctx)
    chosen, rejected = planner_layouts(plan_json)
    max_procs = len(ctx.machine["gpus"]) if ctx.use_gpu else ctx.num_cores
    sizes = sorted({int(x["data_parallel_size"]) for x in [chosen, *rejected]} - {0})
    runnable = [n for n in sizes if n <= max_procs]
    chosen_size = int(chosen["data_parallel_size"])
    if chosen_size not in runnable or len(runnable) < 2:
        raise Skip(f"no rejected layout runnable here (sizes {sizes}, at most {max_procs} processes)")
    tasks, limit = ["ext_arith_mc"], ctx.suite.limit("planner")
    impls = {"ext": ctx.hf_impl("hf_ext")}
    runs, steps = {}, []
    for size in runnable:
        runs[f"dp{size}"] = ctx.run(f"planner-dp{size}", {"include_path": ctx.include_path(), "impls": impls,
                                    "steps": comparison_steps(["ext"], tasks, limit, ctx.suite, num_processes=size)},
                                    num_processes=size)
        steps += _tag(runs[f"dp{size}"].get("steps", []), f"dp{size}")
    rows = [make_row(f"planner's DP {chosen_size} vs rejected DP {size}", steps, baseline=(f"ext@dp{size}", ""),
                     candidate=(f"ext@dp{chosen_size}", ""), labels=(f"rejected DP{size}", f"chosen DP{chosen_size}"),
                     tasks=tasks) for size in runnable if size != chosen_size]
    return _result(rows, runs, {"plan": plan_json, "limit": limit})


def _plugin(module_name: str, ctx: Context) -> dict:
    """Call ``benchmarks/<module>.py``'s ``bench_scenario(ctx) -> dict`` (rows in this module's shape)."""
    if not (ROOT / "benchmarks" / f"{module_name}.py").exists():
        raise Skip(f"benchmarks/{module_name}.py not in this checkout yet")
    module = importlib.import_module(f"benchmarks.{module_name}")
    fn = getattr(module, "bench_scenario", None)
    if fn is None:
        raise Skip(f"benchmarks/{module_name}.py has no bench_scenario(ctx); wire it in at merge")
    return fn(ctx)


@scenario("demo-cache", "make demo's evaluation, cold vs warm hf_ext request cache (fresh processes)")
def demo_cache(ctx: Context) -> dict:
    if ctx.use_gpu:
        raise Skip("the demo's evaluation is a CPU job")
    return _plugin("cache_rerun", ctx)


@scenario("compare-hf", "benchmarks/compare_hf.py (scoring engine: stock hf auto/best vs hf_ext per task)")
def compare_hf(ctx: Context) -> dict:
    return _plugin("compare_hf", ctx)


@scenario("compare-vllm", "benchmarks/compare_vllm.py (stock vllm DP 2 via Ray vs vllm_ext persistent DP 2)")
def compare_vllm(ctx: Context) -> dict:
    require_vllm()
    return _plugin("compare_vllm", ctx)


@scenario("real-tasks", "real tasks (ARC-Easy, MMLU 5-shot, LAMBADA, WikiText-2, GSM8K): stock hf's best fixed "
          "batch_size vs hf_ext defaults")
def real_tasks(ctx: Context) -> dict:
    return _plugin("real_tasks", ctx)
