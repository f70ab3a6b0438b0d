"""Cold vs warm run of one hf_ext evaluation over the request cache, side by side.

Both runs are fresh processes with the same command; the first fills an empty cache directory,
the second finds every request there (and never loads the weights). Prints per run: process wall
time, time inside ``simple_evaluate`` (without interpreter and library imports), the cache figures
and whether every metric is identical.

    .venv/bin/python benchmarks/cache_rerun.py --model .models/smollm2-135m --tasks ext_suite

As the ``demo-cache`` scenario of ``benchmarks/run.py`` it evaluates exactly what ``make demo``
evaluates (``ext_suite``, every document, ``max_batch_tokens=auto``), cold then warm, once per
repetition, each pair over its own empty cache directory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
import lm_eval
from lm_eval.tasks import TaskManager
model, model_args, tasks, tasks_dir, batch_size, limit = sys.argv[1:7]
started = time.perf_counter()
results = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks.split(","),
    task_manager=TaskManager(include_path=tasks_dir, include_defaults=False),
    batch_size=None if batch_size == "none" else batch_size,
    limit=int(limit) if limit != "none" else None, log_samples=True)
evaluate_s = time.perf_counter() - started
samples = {t: [{"doc_id": s["doc_id"], "resps": s["resps"]} for s in rows] for t, rows in results["samples"].items()}
sys.stdout.write("RESULT " + json.dumps({"evaluate_s": evaluate_s, "results": results["results"],
    "request_cache": results["config"].get("request_cache"), "samples": samples}) + "\\n")
"""


def run_once(model_args: str, args, model: str = "hf_ext") -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, model, model_args, args.tasks, str(ROOT / "tasks"), args.batch_size, args.limit],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
    return {"wall_s": wall_s, **json.loads(line[len("RESULT "):])}


DEMO_MODEL_ARGS = "max_batch_tokens=auto"  # scripts/demo.py's default


def bench_scenario(ctx) -> dict:
    """``demo-cache`` for benchmarks/run.py: the demo's evaluation cold, then warm, per repetition."""
    from benchmarks.lib.agreement import compact_samples
    from benchmarks.lib.rows import make_row

    args = argparse.Namespace(tasks="ext_suite", batch_size="none", limit="none")
    steps = []
    for rep in range(ctx.suite.repetitions):
        cache_dir = ctx.work_dir / "demo-cache" / f"r{rep}"
        model_args = f"pretrained={ctx.model_path},{DEMO_MODEL_ARGS},cache_dir={cache_dir}"
        for side in ("cold", "warm", "floor"):
            # floor: lm-eval's own per-run cost, with its `dummy` model that computes nothing
            run = run_once(model_args, args) if side != "floor" else run_once("", args, model="dummy")
            steps.append({"impl": f"demo-{side}", "label": f"r{rep}", "eval_s": run["evaluate_s"],
                          "process_s": run["wall_s"], "samples": compact_samples(run["samples"]),
                          "request_cache": run["request_cache"]})
    row = make_row("demo evaluation: warm vs cold hf_ext cache (whole ext_suite)", steps,
                   baseline=("demo-cold", ""), candidate=("demo-warm", ""), labels=("cold", "warm"))
    warm_steps = [s for s in steps if s["impl"] == "demo-warm"]
    row["candidate"]["cache_hits"] = warm_steps[0]["request_cache"]["totals"]["hits"]
    cold_s, warm_s = row["baseline"]["median_s"], row["candidate"]["median_s"]
    floor_s = sorted(s["eval_s"] for s in steps if s["impl"] == "demo-floor")[ctx.suite.repetitions // 2]
    fast = all((s["request_cache"] or {}).get("fast_path") for s in warm_steps)
    notes = [f"warm/cold median time inside simple_evaluate: {warm_s / cold_s:.1%}; backend skipped on every "
             f"warm run: {fast}",
             f"lm-eval's own floor (model=dummy, same tasks, nothing computed): median {floor_s:.2f} s = "
             f"{floor_s / cold_s:.1%} of cold",
             "process wall (interpreter + imports + evaluation), cold/warm/floor per repetition: " + ", ".join(
                 f"{c['process_s']:.1f}/{w['process_s']:.1f}/{f['process_s']:.1f} s"
                 for c, w, f in zip(steps[0::3], steps[1::3], steps[2::3]))]
    return {"rows": [row], "runs": {}, "config": {"tasks": ["ext_suite"], "model_args": DEMO_MODEL_ARGS}, "notes": notes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / ".models" / "smollm2-135m"))
    parser.add_argument("--tasks", default="ext_suite")
    parser.add_argument("--batch-size", default="8")
    parser.add_argument("--limit", default="none")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cache-bench-") as cache_dir:
        model_args = f"pretrained={args.model},cache_dir={cache_dir}"
        cold, warm = run_once(model_args, args), run_once(model_args, args)
    rows = [("cold (empty cache)", cold), ("warm (all cached)", warm)]
    sys.stdout.write(f"{'run':20} {'process wall s':>15} {'evaluate s':>11} {'hits':>6} {'misses':>7} {'weights loaded':>15}\n")
    for name, run in rows:
        totals = run["request_cache"]["totals"]
        sys.stdout.write(f"{name:20} {run['wall_s']:15.1f} {run['evaluate_s']:11.1f} {totals['hits']:6d} "
                         f"{totals['misses']:7d} {str(run['request_cache'].get('model_loaded')):>15}\n")
    sys.stdout.write(f"warm/cold: process {warm['wall_s'] / cold['wall_s']:.1%}, "
                     f"evaluate {warm['evaluate_s'] / cold['evaluate_s']:.1%}; "
                     f"metrics identical: {warm['results'] == cold['results']}\n")
    return 0 if warm["results"] == cold["results"] else 1


if __name__ == "__main__":
    sys.exit(main())
