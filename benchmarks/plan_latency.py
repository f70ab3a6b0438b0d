"""Time ``lm-eval-ext plan --json`` on every case of the planner's test table, each with an empty cache.

    python benchmarks/plan_latency.py [--out DIR]

Each case runs the real console script in a fresh process with its own empty
``LM_EVAL_EXT_CACHE_DIR``, so nothing is remembered between cases: this is the first call a user
makes for a model. Writes ``DIR/results.json`` and ``DIR/table.md`` (default
benchmarks/results/plan-latency) and exits 1 if a case disagrees with the table or takes 5 s or more.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.unit.test_planner import TABLE  # noqa: E402  (the table the planner is tested on)

CONFIGS = ROOT / "tests" / "fixtures" / "configs"
LIMIT_S = 5.0


def _command(name: str, dtype: str, gpus: str, nodes: int, backend: str, extra: dict) -> list[str]:
    cli = Path(sys.executable).with_name("lm-eval-ext")
    command = [str(cli), "plan", "--model_args", f"pretrained={CONFIGS / name},dtype={dtype}",
               "--gpus", gpus or "none", "--nodes", str(nodes), "--backend", backend, "--json"]
    if "num_processes" in extra:
        command += ["--num_processes", str(extra["num_processes"])]
    return command


def run_case(case: tuple) -> dict:
    name, dtype, gpus, nodes, backend, extra, _, strategy, *_ = case
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="plan_latency_") as cache_dir:
        env["LM_EVAL_EXT_CACHE_DIR"] = cache_dir
        start = time.perf_counter()
        done = subprocess.run(_command(name, dtype, gpus, nodes, backend, extra), env=env,
                              capture_output=True, text=True, check=False)
        wall_s = time.perf_counter() - start
    got = json.loads(done.stdout)["strategy"] if done.returncode == 0 else f"exit {done.returncode}"
    return {"model": name, "dtype": dtype, "gpus": gpus or "none", "nodes": nodes, "backend": backend,
            "expected": strategy, "got": got, "wall_s": round(wall_s, 3)}


def to_markdown(rows: list[dict]) -> str:
    lines = ["| model | dtype | --gpus | nodes | backend | strategy | wall s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = "" if r["got"] == r["expected"] else f" (expected {r['expected']})"
        lines.append(f"| {r['model']} | {r['dtype']} | {r['gpus']} | {r['nodes']} | {r['backend']} | "
                     f"{r['got']}{mark} | {r['wall_s']:.2f} |")
    walls = sorted(r["wall_s"] for r in rows)
    lines.append(f"\n{len(rows)} cases, each a fresh process with an empty cache: median {walls[len(walls) // 2]:.2f} s, "
                 f"max {walls[-1]:.2f} s (limit {LIMIT_S:.0f} s).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "plan-latency")
    args = parser.parse_args(argv)
    rows = [run_case(case) for case in TABLE]
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {"cores": os.cpu_count(), "load_avg": os.getloadavg()}
    (args.out / "results.json").write_text(json.dumps({"machine": machine, "cases": rows}, indent=1) + "\n")
    table = to_markdown(rows)
    (args.out / "table.md").write_text(table)
    sys.stdout.write(table)
    bad = [r for r in rows if r["got"] != r["expected"] or r["wall_s"] >= LIMIT_S]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
