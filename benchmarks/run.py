"""Stock lm-eval side by side with lm-eval-ext: run a suite of scenarios, write JSON, table, chart.

    python benchmarks/run.py --suite cpu-quick [--out DIR] [--only hf-suite,cache] [--update-readme]

Writes ``DIR/results.json`` (everything), ``DIR/scenarios/<name>.json`` (one per scenario),
``DIR/table.md`` and ``DIR/speedups.png``. Every number in them comes from this run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.lib import machine as machine_info  # noqa: E402
from benchmarks.lib import report  # noqa: E402
from benchmarks.lib import scenarios_hf, scenarios_more  # noqa: E402,F401  (register scenarios)
from benchmarks.lib.scenarios import SCENARIOS, Context, Skip  # noqa: E402
from benchmarks.lib.suites import SUITES  # noqa: E402

os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="cpu-quick")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default out/bench/<suite>-<time>)")
    parser.add_argument("--only", default="", help="comma-separated scenario names to run (default: the suite's)")
    parser.add_argument("--models-dir", type=Path, default=ROOT / ".models")
    parser.add_argument("--model-path", type=Path, default=None,
                        help="use this checkpoint instead of building the suite's model (GPU machine)")
    parser.add_argument("--model-label", default=None, help="name shown for --model-path in the outputs")
    parser.add_argument("--update-readme", action="store_true", help="rewrite the suite's section of benchmarks/README.md")
    parser.add_argument("--from-results", type=Path, default=None, metavar="RESULTS_JSON",
                        help="measure nothing: re-render table, chart (and README with --update-readme) from a results.json")
    return parser.parse_args(argv)


def find_data_dir() -> Path | None:
    candidates = [os.environ.get("BENCH_DATA_DIR"), ROOT.parent / "shared" / "data", ROOT / "shared" / "data",
                  Path("/work/shared/data")]
    return next((Path(c) for c in candidates if c and Path(c).is_dir()), None)


def ensure_model(name: str, models_dir: Path) -> Path:
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_models import ensure_model as build

    return build(name, models_dir)


def run_scenario(name: str, ctx: Context) -> dict:
    start = time.perf_counter()
    try:
        if ctx.use_gpu and not ctx.machine["gpus"]:
            raise Skip(f"suite {ctx.suite.name} needs a CUDA device and none is visible")
        outcome = {"status": "ok", "reason": ""} | SCENARIOS[name].fn(ctx)
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
    table = report.render_table(results)
    (out / "table.md").write_text(table)
    report.write_chart(results, out / "speedups.png")


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the launcher, which ends its workers


def rerender(args: argparse.Namespace) -> int:
    results = json.loads(args.from_results.read_text())
    out = args.out or args.from_results.parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table := report.render_table(results))
    report.write_chart(results, out / "speedups.png")
    if args.update_readme:
        report.update_readme(ROOT / "benchmarks" / "README.md", results["suite"], table)
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parse_args(argv)
    if args.from_results:
        return rerender(args)
    suite = SUITES[args.suite]
    started = datetime.now(timezone.utc)
    out = args.out or ROOT / "out" / "bench" / f"{suite.name}-{started:%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.only.split(",") if n] or list(suite.scenarios)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    machine = machine_info.describe()
    model_path = args.model_path.resolve() if args.model_path else ensure_model(suite.model, args.models_dir)
    ctx = Context(suite=suite, work_dir=out / "work", model_path=model_path, machine=machine, data_dir=find_data_dir())
    model = args.model_label or (model_path.name if args.model_path else suite.model)
    results = {"suite": suite.name, "model": model, "model_path": str(model_path), "repetitions": suite.repetitions,
               "started_utc": f"{started:%Y-%m-%d %H:%M}", "machine": machine, "scenarios": {}}
    start = time.perf_counter()
    for name in names:
        print(f"[bench] {name}: {SCENARIOS[name].title} ...", flush=True)
        results["scenarios"][name] = outcome = run_scenario(name, ctx)
        print(f"[bench] {name}: {outcome['status']} in {outcome['scenario_wall_s']:.0f} s {outcome['reason']}", flush=True)
        results |= {"wall_s": time.perf_counter() - start, "load_average_at_end": machine_info.load_average()}
        write_outputs(results, out)  # after each scenario, so a killed run keeps what it measured
    table = (out / "table.md").read_text()
    print(table)
    if args.update_readme:
        report.update_readme(ROOT / "benchmarks" / "README.md", suite.name, table)
    print(f"[bench] wrote {out}/results.json, table.md, speedups.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
