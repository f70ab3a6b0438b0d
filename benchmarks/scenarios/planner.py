"""The planner: its chosen layout against the layouts it rejected (measured where this hardware can run
them), and how fast ``lm-eval-ext plan`` answers (every case of ``benchmarks/data/plan_cases.json``,
the planner tests' table of models and GPUs, in a fresh process with an empty cache)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from benchmarks.lib import compare, launch
from benchmarks.lib.compare import Comparison, Group
from benchmarks.lib.rows import make_row
from benchmarks.lib.scenarios import ROOT, Context, Skip, module_available, result, scenario

CASES = ROOT / "benchmarks" / "data" / "plan_cases.json"
CONFIGS = ROOT / "tests" / "fixtures" / "configs"
LIMIT_S = 5.0


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
    done = launch.run_command([sys.executable, "-m", "lm_eval_ext.cli", "plan", "--json", "--model", "hf_ext",
                               "--model_args", f"pretrained={ctx.model_path}"])
    if done.returncode != 0:
        raise Skip(f"lm-eval-ext plan --json failed ({done.returncode}): {done.stderr[-500:]}")
    return json.loads(done.stdout)


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
    tasks, limit = ["ext_arith_mc"], ctx.limit("planner")
    runs, steps = {}, []
    for size in runnable:
        comparison = Comparison(f"planner-dp{size}", {"ext": ctx.hf_impl("hf_ext")}, [Group("", tuple(tasks), limit)],
                                ctx.include_path(), stock=(), candidate="ext", num_processes=size)
        runs[f"dp{size}"] = compare.run(ctx, comparison)
        steps += [s | {"side": f"{s['side']}@dp{size}"} for s in runs[f"dp{size}"].get("steps", [])]
    rows = [make_row(f"planner's DP {chosen_size} vs rejected DP {size}", steps, baseline=(f"ext@dp{size}", ""),
                     candidate=(f"ext@dp{chosen_size}", ""), labels=(f"rejected DP{size}", f"chosen DP{chosen_size}"),
                     tasks=tasks, key=f"dp{size}") for size in runnable if size != chosen_size]
    return result(rows, runs, {"plan": plan_json, "limit": limit})


def load_cases(path: Path = CASES) -> list[dict]:
    """The plan-latency cases: model config (under tests/fixtures/configs), dtype, ``--gpus``, nodes,
    backend, extra options and the strategy the planner must choose."""
    return json.loads(path.read_text())


def plan_command(case: dict) -> list[str]:
    cli = Path(sys.executable).with_name("lm-eval-ext")
    command = [str(cli), "plan", "--model_args", f"pretrained={CONFIGS / case['model']},dtype={case['dtype']}",
               "--gpus", case["gpus"] or "none", "--nodes", str(case["nodes"]), "--backend", case["backend"], "--json"]
    if "num_processes" in case["extra"]:
        command += ["--num_processes", str(case["extra"]["num_processes"])]
    return command


def run_case(case: dict) -> dict:
    """One ``lm-eval-ext plan --json`` in a fresh process with an empty cache: what a user's first
    call for a model costs."""
    with tempfile.TemporaryDirectory(prefix="plan_latency_") as cache_dir:
        done = launch.run_command(plan_command(case), env={"LM_EVAL_EXT_CACHE_DIR": cache_dir})
    got = json.loads(done.stdout)["strategy"] if done.returncode == 0 else f"exit {done.returncode}"
    return {"model": case["model"], "dtype": case["dtype"], "gpus": case["gpus"] or "none", "nodes": case["nodes"],
            "backend": case["backend"], "expected": case["strategy"], "got": got, "wall_s": round(done.wall_s, 3)}


def latency_table(rows: list[dict]) -> str:
    lines = ["| model | dtype | --gpus | nodes | backend | strategy | wall s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = "" if r["got"] == r["expected"] else f" (expected {r['expected']})"
        lines.append(f"| {r['model']} | {r['dtype']} | {r['gpus']} | {r['nodes']} | {r['backend']} | "
                     f"{r['got']}{mark} | {r['wall_s']:.2f} |")
    walls = sorted(r["wall_s"] for r in rows)
    lines.append(f"\n{len(rows)} cases, each a fresh process with an empty cache: median {walls[len(walls) // 2]:.2f} s, "
                 f"max {walls[-1]:.2f} s (limit {LIMIT_S:.0f} s).")
    return "\n".join(lines)


@scenario("plan-latency", "lm-eval-ext plan --json on every case of the planner's table, each a fresh process "
          "with an empty cache (must agree with the table, under 5 s)")
def plan_latency(ctx: Context) -> dict:
    if not Path(sys.executable).with_name("lm-eval-ext").exists():
        raise Skip(f"no lm-eval-ext console script next to {sys.executable} (pip install -e .)")
    rows = [run_case(case) for case in load_cases()]
    bad = [r for r in rows if r["got"] != r["expected"] or r["wall_s"] >= LIMIT_S]
    walls = sorted(r["wall_s"] for r in rows)
    outcome = {"runs": {"cases": rows}, "figures": {"table": latency_table(rows)},
               "notes": [f"{len(rows)} cases: median {walls[len(walls) // 2]:.2f} s, max {walls[-1]:.2f} s"]}
    if bad:
        outcome |= {"status": "failed", "reason": f"{len(bad)} case(s) disagree with the table or took "
                    f">= {LIMIT_S:.0f} s (first: {bad[0]['model']} {bad[0]['gpus']}: {bad[0]['got']})"}
    return outcome
