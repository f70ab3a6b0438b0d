"""Stock lm-eval side by side with lm-eval-ext: the one benchmark instrument.

    python benchmarks/run.py --suite cpu-quick [--out DIR] [--only hf-suite,cache]
    python benchmarks/run.py --suite cpu-full --only real-tasks --tasks arc_easy_local --limit 200
    python benchmarks/run.py --docs benchmarks/results/cpu-full/results.json,benchmarks/results/cpu-quick/results.json
    python benchmarks/run.py --list

Writes ``DIR/results.json`` (everything), ``DIR/scenarios/<name>.json`` (one per scenario),
``DIR/table.md`` and ``DIR/speedups.png``. Every number in them comes from this run. ``--docs``
measures nothing: it rewrites the figure blocks of README.md, docs/*.md and benchmarks/README.md
from results JSON (:mod:`benchmarks.lib.docs`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import scenarios  # noqa: E402,F401  (registers the scenarios)
from benchmarks.lib import docs, report  # noqa: E402
from benchmarks.lib import machine as machine_info  # noqa: E402
from benchmarks.lib.gsm8k import data_roots  # noqa: E402
from benchmarks.lib.scenarios import SCENARIOS, Context, Skip  # noqa: E402
from benchmarks.lib.suites import SUITES  # noqa: E402

os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})

#: run.py options a scenario may read (``Scenario.options``), with their help
SCENARIO_OPTIONS = {
    "tasks": "tasks of the scenario: real-tasks task-name prefixes (arc_easy_local,mmlu), engine-ceiling task "
             "names or 'mmlu', compare-hf task names, compare-vllm shipped|arc|mmlu|mc, vllm-block-bound arc,mmlu "
             "(or a vllm-mc shape), vllm-mc and vllm-profile shapes arc0,arc5,mmlu5,mmlu0",
    "mmlu_subjects": "how many MMLU subjects (real-tasks, engine-ceiling)",
    "stock_sizes": "stock batch sizes on scoring tasks, e.g. 8,16,32 (real-tasks, compare-hf)",
    "generation_sizes": "stock batch sizes on generation tasks (real-tasks, compare-hf)",
    "rolling_sizes": "stock batch sizes on WikiText-2 (real-tasks)",
    "shapes": "ROWSxTOKENS[+PREFIX],... (forward-ceiling)",
    "seconds": "time per shape (forward-ceiling)",
    "rounds": "replay rounds (engine-ceiling)",
    "block_sizes": "KV block sizes, e.g. 128,32,16,8 (vllm-block-bound)",
    "data_parallel_size": "replicas of each side (compare-vllm; default 2)",
    "repeats": "samples per question of gsm8k_cot_self_consistency (generation; lm-eval's 64 by default)",
    "decode_rows": "live rows at which the decode rate is measured, e.g. 1,32; empty: none (generation)",
    "sizes_gsm8k": "stock batch sizes on gsm8k (generation)",
    "sizes_cot": "stock batch sizes on gsm8k_cot (generation)",
    "sizes_sc": "stock batch sizes on gsm8k_cot_self_consistency (generation)",
    "sample_checks": "self-consistency samples checked at a second token budget and/or under two ranks: "
                     "budget,ranks (default) or empty (generation)",
}


def parse_limit(text: str) -> dict[str, int | None]:
    """``200`` (every task of the scenario) or ``arc=200,mmlu=100`` (per part) -> ``{"": 200}`` / ``{...}``."""
    out: dict[str, int | None] = {}
    for part in (p for p in text.split(",") if p):
        key, _, value = part.rpartition("=")
        out[key] = None if value in ("all", "none") else int(value)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="cpu-quick")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default out/bench/<suite>-<time>)")
    parser.add_argument("--only", default="", help="comma-separated scenario names to run (default: the suite's)")
    parser.add_argument("--models-dir", type=Path, default=ROOT / ".models")
    parser.add_argument("--model-path", type=Path, default=None,
                        help="use this checkpoint instead of building the suite's model (GPU machine)")
    parser.add_argument("--model-label", default=None, help="name shown for --model-path in the outputs")
    parser.add_argument("--repetitions", type=int, default=None, help="measured repetitions per side (default: the suite's)")
    parser.add_argument("--limit", type=parse_limit, default=None,
                        help="documents per task: N, or PART=N,... (real-tasks parts: arc, mmlu, lambada, wikitext, "
                             "gsm8k; compare-hf: gsm8k, long; vllm-block-bound: arc, mmlu)")
    for name, text in SCENARIO_OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=text)
    parser.add_argument("--from-results", type=Path, default=None, metavar="RESULTS_JSON",
                        help="measure nothing: re-render table and chart from a results.json")
    parser.add_argument("--docs", default=None, metavar="RESULTS_JSON[,RESULTS_JSON...]",
                        help="measure nothing: rewrite the bench blocks of README.md, docs/*.md and benchmarks/README.md")
    parser.add_argument("--list", action="store_true", help="list the scenarios, their options and suites")
    return parser.parse_args(argv)


def find_data_dir() -> Path | None:
    return next((d for d in [*data_roots(ROOT), ROOT / "shared" / "data"] if d.is_dir()), None)


def ensure_model(name: str, models_dir: Path) -> Path:
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_models import ensure_model as build

    return build(name, models_dir)


def run_scenario(name: str, ctx: Context) -> dict:
    start = time.perf_counter()
    try:
        if ctx.use_gpu and not ctx.machine["gpus"]:
            raise Skip(f"suite {ctx.suite.name} needs a CUDA device and none is visible")
        outcome = {"status": "ok", "reason": ""} | SCENARIOS[name].fn(dataclasses.replace(ctx, scenario=name))
        rows = outcome.get("rows", [])
        if rows and not any(r["candidate"].get("repetitions") for r in rows):
            outcome |= {"status": "failed", "reason": "no measured repetition finished (see notes)"}
    except Skip as skip:
        outcome = {"status": "skipped", "reason": str(skip)}
    except Exception as exc:  # one broken scenario must not lose the others' numbers
        outcome = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    outcome["title"] = SCENARIOS[name].title
    outcome["scenario_wall_s"] = time.perf_counter() - start
    return outcome


def write_outputs(results: dict, out: Path) -> None:
    (out / "scenarios").mkdir(parents=True, exist_ok=True)
    for name, outcome in results["scenarios"].items():
        record = {k: v for k, v in results.items() if k != "scenarios"} | {"scenario": name, **outcome}
        (out / "scenarios" / f"{name}.json").write_text(json.dumps(record, indent=1, default=str))
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "table.md").write_text(report.render_table(results))
    report.write_chart(results, out / "speedups.png")


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the launcher, which ends its workers


def rerender(args: argparse.Namespace) -> int:
    results = json.loads(args.from_results.read_text())
    out = args.out or args.from_results.parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table := report.render_table(results))
    report.write_chart(results, out / "speedups.png")
    print(table)
    return 0


def update_docs(spec: str) -> int:
    paths = [Path(p) for p in spec.split(",") if p]
    try:
        changed, pending = docs.update(ROOT, paths, set(SCENARIOS))
    except (docs.DocsError, OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"run.py --docs: {exc}") from None
    print(f"[bench] docs: rewrote {', '.join(changed) or 'nothing (already current)'}")
    for where in pending:
        print(f"[bench] docs: pending (no given results hold it): {where}")
    return 0


def list_scenarios() -> int:
    for name, entry in SCENARIOS.items():
        suites = [s.name for s in SUITES.values() if name in s.scenarios]
        options = " ".join(f"--{o.replace('_', '-')}" for o in entry.options)
        print(f"{name:<24} {entry.title}\n{'':<24} suites: {', '.join(suites) or '-'}"
              + (f"; options: {options}" if options else ""))
    return 0


def command_line(argv: list[str]) -> str:
    """How this run was started, for the figures' "measure again" line (output folder left out)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            kept.append(arg)
    return shlex.join(["python", "benchmarks/run.py", *kept])


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.list:
        return list_scenarios()
    if args.docs:
        return update_docs(args.docs)
    if args.from_results:
        return rerender(args)
    suite = SUITES[args.suite]
    if args.repetitions:
        suite = dataclasses.replace(suite, repetitions=args.repetitions)
    started = datetime.now(timezone.utc)
    out = args.out or ROOT / "out" / "bench" / f"{suite.name}-{started:%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / "scenarios").glob("*.json"):  # a previous run's, in a reused folder (make bench)
        stale.unlink()
    names = [n for n in args.only.split(",") if n] or list(suite.scenarios)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    options = {name: getattr(args, name) for name in [*SCENARIO_OPTIONS, "limit"] if getattr(args, name) is not None}
    machine = machine_info.describe()
    model_path = args.model_path.resolve() if args.model_path else ensure_model(suite.model, args.models_dir)
    ctx = Context(suite=suite, work_dir=out / "work", model_path=model_path, machine=machine, data_dir=find_data_dir(),
                  options=options)
    model = args.model_label or (model_path.name if args.model_path else suite.model)
    results = {"suite": suite.name, "model": model, "model_path": str(model_path), "repetitions": suite.repetitions,
               "started_utc": f"{started:%Y-%m-%d %H:%M}", "command": command_line(argv), "options": options,
               "machine": machine, "scenarios": {}}
    start = time.perf_counter()
    for name in names:
        print(f"[bench] {name}: {SCENARIOS[name].title} ...", flush=True)
        results["scenarios"][name] = outcome = run_scenario(name, ctx)
        print(f"[bench] {name}: {outcome['status']} in {outcome['scenario_wall_s']:.0f} s {outcome['reason']}", flush=True)
        results |= {"wall_s": time.perf_counter() - start, "load_average_at_end": machine_info.load_average()}
        write_outputs(results, out)  # after each scenario, so a killed run keeps what it measured
    print((out / "table.md").read_text())
    print(f"[bench] wrote {out}/results.json, table.md, speedups.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
