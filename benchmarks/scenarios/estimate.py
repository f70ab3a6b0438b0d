"""Scenario ``estimate``: ``lm-eval-ext plan --tasks`` against the run it estimates (issue 25).

On lm-eval's own ARC-Easy (0-shot), MMLU (5-shot, two subjects), LAMBADA, WikiText-2 and GSM8K
(5-shot) over ../shared/data, with the suite's model, in a fresh history folder:

1. ``plan --tasks`` (every task, no ``--measure``): how long the bill takes to answer (target: < 10 s);
2. ``plan --tasks --measure --json`` per task: the *measured* estimate;
3. the run: ``hf_ext`` (the suite's settings, request cache off) in one worker process, one
   evaluation per task after a warm-up, so each task's model time is its own; the run leaves its
   rates in the history;
4. ``plan --tasks --json`` per task again: the *history* estimate;
5. the same run again, in a fresh process: the actual both estimates are held to (the history
   estimate would otherwise be compared with the very run it remembers).

Reported per task: counted tokens against the engine's cost report (equal for scoring; generation
within the counted range), each estimate against the task's model seconds (targets: within 25 %
per task, 15 % in total), and the table ``docs/planner.md`` shows (:func:`markdown_table`).

Standalone: ``python -m benchmarks.scenarios.estimate --model-path .models/smollm2-135m --out DIR``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from benchmarks.lib import launch, real_tasks
from benchmarks.lib.scenarios import ROOT, Context, Skip, scenario

SUBJECTS = ("anatomy", "marketing")
#: documents per task when the suite names none (``estimate-<task>`` limits override)
DEFAULT_LIMITS = {real_tasks.ARC: 40, real_tasks.mmlu_task(SUBJECTS[0]): 20, real_tasks.mmlu_task(SUBJECTS[1]): 20,
                  real_tasks.LAMBADA: 40, real_tasks.WIKITEXT: 2, real_tasks.GSM8K: 4}
#: ``--small``: a smoke run's documents per task
SMALL_LIMITS = {real_tasks.ARC: 12, real_tasks.mmlu_task(SUBJECTS[0]): 6, real_tasks.mmlu_task(SUBJECTS[1]): 6,
                real_tasks.LAMBADA: 12, real_tasks.WIKITEXT: 1, real_tasks.GSM8K: 2}
#: the worker runs lm-eval with few-shot seed 0 (benchmarks/lib/worker.py); the plan must draw the same shots
FEWSHOT_SEED = 0
TARGET_TASK, TARGET_TOTAL, TARGET_LATENCY_S = 0.25, 0.15, 10.0


def limits(ctx: Context) -> dict[str, int]:
    out = dict(DEFAULT_LIMITS)
    for task in out:
        short = task.replace("_local", "").split("_")[0]
        given = ctx.suite.limit(f"estimate-{short}")
        out[task] = given if given is not None else out[task]
    return out


def plan_command(ctx: Context, tasks: list[str], limit: int, include: str, *extra: str) -> list[str]:
    model_args = f"pretrained={ctx.model_path},dtype={ctx.suite.dtype}"
    return [sys.executable, "-m", "lm_eval_ext.cli", "plan", "--model_args", model_args, "--tasks", ",".join(tasks),
            "--limit", str(limit), "--include_path", include, "--fewshot_seed", str(FEWSHOT_SEED), *extra]


def run_plan(ctx: Context, env: dict, tasks: list[str], limit: int, include: str, *extra: str) -> tuple[dict, float]:
    done = launch.run_command(plan_command(ctx, tasks, limit, include, *extra), env=env, timeout_s=900)
    wall_s = done.wall_s
    if done.returncode != 0:
        raise RuntimeError(f"plan {' '.join(extra)} failed ({done.returncode}): {done.stderr[-800:]}")
    return (json.loads(done.stdout) if "--json" in extra else {"text": done.stdout}), wall_s


def estimates(ctx: Context, env: dict, task_limits: dict[str, int], include: str, *extra: str) -> dict:
    """``{task: the plan's estimate of it}``, one plan call per task: the run evaluates each task
    alone (its own model time), and a call's rows depend on the tasks in it."""
    out = {}
    for task, limit in task_limits.items():
        payload, _ = run_plan(ctx, env, [task], limit, include, "--json", *extra)
        out.update(payload["estimate"]["tasks"])
    return out


def actual_run(ctx: Context, env: dict, task_limits: dict[str, int], include: str, name: str) -> dict:
    """One fresh worker process: a warm-up, then each task evaluated alone (its own model time)."""
    impls = {"ext": ctx.hf_impl("hf_ext")}
    first = next(iter(task_limits))
    steps = [{"label": "warmup", "impl": "ext", "tasks": [first], "limit": 1, "measured": False, "keep_outputs": False}]
    steps += [{"label": task, "impl": "ext", "tasks": [task], "limit": limit, "keep_outputs": False}
              for task, limit in task_limits.items()]
    return ctx.run(name, {"include_path": ctx.include_path(Path(include)), "impls": impls, "steps": steps}, env=env)


def engine_counters(steps: list[dict]) -> dict[str, dict[str, float]]:
    """Each measured step's own cost-report counters for its task. The worker already reports a
    step's counters as what the step added (``benchmarks/lib/probes.py`` ``counters_delta``: one
    model serves every step); the warm-up step is not a task's run."""
    out = {}
    for step in steps:
        if step.get("measured") is False:
            continue
        by_task = (step.get("extension") or {}).get("by_task", {})
        for task in step.get("tasks") or [step["label"]]:
            out[task] = {k: v for k, v in by_task.get(task, {}).items() if isinstance(v, (int, float))}
    return out


def compare(task_limits: dict, measured: dict, remembered: dict, merged: dict) -> list[dict]:
    ok_steps = [s for s in merged.get("steps", []) if "error" not in s]
    steps = {s["label"]: s for s in ok_steps}
    counters = engine_counters(ok_steps)
    rows = []
    for task in task_limits:
        step = steps.get(task, {})
        model_s = sum(t["time_s"] for t in (step.get("request_types") or {}).values())
        engine = counters.get(task, {}) if task in steps else {}
        counted = measured.get(task, {})
        rows.append({
            "task": task, "requests": counted.get("requests"), "counted_tokens": counted.get("computed_tokens"),
            "counted_low": counted.get("computed_tokens_low"), "counted_high": counted.get("computed_tokens_high"),
            "engine_tokens": round(engine["tokens_computed"]) if "tokens_computed" in engine else None,
            "measured_s": counted.get("seconds"), "history_s": remembered.get(task, {}).get("seconds"),
            "history_source": remembered.get(task, {}).get("source"), "actual_s": round(model_s, 2) or None,
        })
    return rows


def _error(estimate: float | None, actual: float | None) -> float | None:
    return None if not estimate or not actual else estimate / actual - 1


def verdicts(rows: list[dict], latency_s: float) -> dict:
    def within(key: str, bound: float) -> bool:
        errors = [_error(r[key], r["actual_s"]) for r in rows]
        return all(e is not None and abs(e) <= bound for e in errors)

    def total(key: str) -> float | None:
        actual = sum(r["actual_s"] or 0 for r in rows)
        return _error(sum(r[key] or 0 for r in rows), actual)

    generation = {real_tasks.GSM8K}
    exact = all(r["engine_tokens"] == r["counted_tokens"] for r in rows if r["task"] not in generation)
    in_range = all(r["counted_low"] <= (r["engine_tokens"] or 0) <= r["counted_high"] for r in rows
                   if r["task"] in generation and r["engine_tokens"] is not None)
    return {"measured_per_task_within_25pct": within("measured_s", TARGET_TASK),
            "history_per_task_within_25pct": within("history_s", TARGET_TASK),
            "measured_total_error": total("measured_s"), "history_total_error": total("history_s"),
            "scoring_tokens_exact": exact, "generation_tokens_in_range": in_range,
            "plan_latency_s": round(latency_s, 2), "plan_latency_under_10s": latency_s < TARGET_LATENCY_S}


def markdown_table(rows: list[dict]) -> str:
    """Estimate next to the run, per task (what docs/planner.md shows)."""
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:+.0f} %"

    lines = ["| task | requests | counted tokens | engine tokens | measured est. s | history est. s | actual s "
             "| error measured | error history |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['requests']} | {r['counted_tokens']} | {r['engine_tokens']} | "
                     f"{r['measured_s']} | {r['history_s']} | {r['actual_s']} | "
                     f"{pct(_error(r['measured_s'], r['actual_s']))} | {pct(_error(r['history_s'], r['actual_s']))} |")
    totals = {k: round(sum(r[k] or 0 for r in rows), 2) for k in ("measured_s", "history_s", "actual_s")}
    lines.append(f"| total | | | | {totals['measured_s']} | {totals['history_s']} | {totals['actual_s']} | "
                 f"{pct(_error(totals['measured_s'], totals['actual_s']))} | "
                 f"{pct(_error(totals['history_s'], totals['actual_s']))} |")
    return "\n".join(lines) + "\n"


@scenario("estimate", "plan --tasks (measured, history) against the real run: ARC-Easy, MMLU 5-shot x2, LAMBADA, "
          "WikiText-2, GSM8K 5-shot")
def estimate(ctx: Context) -> dict:
    if not real_tasks.available(ctx.data_dir):
        raise Skip("real benchmark data not found (../shared/data or $BENCH_DATA_DIR)")
    work = ctx.work_dir / "estimate"
    shutil.rmtree(work / "history", ignore_errors=True)  # a fresh history: a reused output folder keeps the last one
    include = str(real_tasks.write_tasks(ctx.data_dir, work / "tasks", subjects=SUBJECTS))
    env = dict(os.environ) | {"LM_EVAL_EXT_CACHE_DIR": str(work / "history"), "HF_HUB_OFFLINE": "1",
                              "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    task_limits = limits(ctx)
    _, latency_s = run_plan(ctx, env, list(task_limits), min(task_limits.values()), include)
    measured = estimates(ctx, env, task_limits, include, "--measure")
    first = actual_run(ctx, env, task_limits, include, "estimate-run1")  # leaves the history
    remembered = estimates(ctx, env, task_limits, include)
    merged = actual_run(ctx, env, task_limits, include, "estimate-run2")  # what both estimates are held to
    rows = compare(task_limits, measured, remembered, merged)
    table = markdown_table(rows)
    notes = [f"plan --tasks (all tasks, no --measure) answered in {latency_s:.1f} s",
             "actual s: each task's model time in the second run; the history estimate comes from the first"]
    notes += [f"step {s['label']}: {s['error']}" for run in (first, merged) for s in run.get("steps", []) if "error" in s]
    return {"rows": [], "runs": {"run1": first, "run2": merged}, "notes": notes, "estimate_rows": rows,
            "table_md": table, "figures": {"table": table},
            "verdicts": verdicts(rows, latency_s),
            "config": {"limits": task_limits, "fewshot_seed": FEWSHOT_SEED, "impl": ctx.hf_impl("hf_ext")}}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from benchmarks.lib import machine
    from benchmarks.lib.suites import SUITES

    parser = argparse.ArgumentParser(description="the estimate scenario alone")
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--suite", default="cpu-full", choices=sorted(SUITES))
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--small", action="store_true", help="a few documents per task (a smoke run)")
    args = parser.parse_args(argv)
    if args.small:
        DEFAULT_LIMITS.update(SMALL_LIMITS)
    ctx = Context(suite=SUITES[args.suite], work_dir=args.out / "work", model_path=args.model_path.resolve(),
                  machine=machine.describe(), data_dir=args.data_dir)
    outcome = estimate(ctx)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "estimate.json").write_text(json.dumps(outcome, indent=1, default=str))
    (args.out / "estimate_table.md").write_text(outcome["table_md"])
    sys.stdout.write(outcome["table_md"] + json.dumps(outcome["verdicts"], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
