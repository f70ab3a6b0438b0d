"""Cold vs warm run of one hf_ext evaluation over the request cache, side by side.

Both runs are fresh processes with the same command; the first fills an empty cache directory,
the second finds every request there (and never loads the weights). Prints per run: process wall
time, time inside ``simple_evaluate`` (without interpreter and library imports), the cache figures
and whether every metric is identical.

    .venv/bin/python benchmarks/cache_rerun.py --model .models/smollm2-135m --tasks ext_suite
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
model_args, tasks, tasks_dir, batch_size, limit = sys.argv[1:6]
started = time.perf_counter()
results = lm_eval.simple_evaluate(model="hf_ext", model_args=model_args, tasks=tasks.split(","),
    task_manager=TaskManager(include_path=tasks_dir, include_defaults=False), batch_size=batch_size,
    limit=int(limit) if limit != "none" else None)
evaluate_s = time.perf_counter() - started
sys.stdout.write("RESULT " + json.dumps({"evaluate_s": evaluate_s, "results": results["results"],
    "request_cache": results["config"].get("request_cache")}) + "\\n")
"""


def run_once(model_args: str, args) -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, model_args, args.tasks, str(ROOT / "tasks"), args.batch_size, args.limit],
        capture_output=True, text=True, check=False,
    )
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
    return {"wall_s": wall_s, **json.loads(line[len("RESULT "):])}


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
