"""Stock ``vllm`` vs ``vllm_ext`` on multiple choice, end to end, with the cost report's token bound.

Per task shape (:mod:`benchmarks.lib.vllm_mc_shapes`: ARC-Easy 0-shot and 5-shot with examples per
document, MMLU 5-shot and 0-shot, lm-eval's own definitions over ``../shared/data``), each run in a
fresh process: the model built from ``pretrained=M,dtype=float32,enforce_eager=True`` and nothing
else (``vllm_ext``'s request cache in a fresh folder, so it is written as a user's would be but
never read), then ``lm_eval.simple_evaluate``. Measured: wall time end to end (engine start
included), the scoring phase (the time inside ``loglikelihood``), and ``vllm_ext``'s cost report
(prompt tokens stock computes, computed, the minimum at its KV block size, probes, fallbacks). The
token bound is stock tokens / minimal tokens; ``of bound`` is the scoring speedup over that bound.
Per-sample agreement is checked against stock (loglikelihoods within 1e-4, ``is_greedy`` equal).

    python benchmarks/vllm_mc.py --model .models/smollm2-135m --shapes arc0,arc5,mmlu5,mmlu0 --repetitions 1

Also a scenario for ``benchmarks/run.py`` (``vllm-mc``, :func:`bench_scenario`).
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

from benchmarks.lib.scenarios import Context, Skip, scenario  # noqa: E402

VARIANTS = ("vllm", "vllm_ext")
ENGINE_ARGS = "dtype=float32,enforce_eager=True"


# ---- one run, in a child process ------------------------------------------------------------------
def measure(variant: str, model: str, shape_name: str, limit: int, tasks_dir: str) -> dict:
    """Build ``variant`` from its model_args string as lm-eval does, evaluate one shape; the row."""
    import lm_eval
    import lm_eval_ext.registry
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    from benchmarks.lib.agreement import compact_samples
    from benchmarks.lib.vllm_mc_shapes import SHAPES

    lm_eval_ext.registry.register_models()
    started_s = time.perf_counter()
    lm = get_model(variant).create_from_arg_string(f"pretrained={model},{ENGINE_ARGS}", {})
    if variant == "vllm_ext":
        lm.engine  # noqa: B018 (started now, as stock starts its engine in its constructor)
    built_s = time.perf_counter()
    scoring = {"s": 0.0}
    loglikelihood = lm.loglikelihood

    def timed_loglikelihood(requests, *args, **kwargs):
        begun_s = time.perf_counter()
        try:
            return loglikelihood(requests, *args, **kwargs)
        finally:
            scoring["s"] += time.perf_counter() - begun_s

    lm.loglikelihood = timed_loglikelihood
    results = lm_eval.simple_evaluate(model=lm, tasks=list(SHAPES[shape_name].tasks), limit=limit, log_samples=True,
                                      task_manager=TaskManager(include_path=tasks_dir, include_defaults=False),
                                      bootstrap_iters=0)
    done_s = time.perf_counter()
    cost = getattr(lm, "cost_report", None)
    return {"variant": variant, "shape": shape_name, "limit": limit, "build_s": round(built_s - started_s, 2),
            "eval_s": round(done_s - built_s, 2), "wall_s": round(done_s - started_s, 2),
            "scoring_s": round(scoring["s"], 2), "cost_report": cost.as_dict() if cost is not None else {},
            "metrics": {t: {k: v for k, v in r.items() if isinstance(v, float)} for t, r in results["results"].items()},
            "samples": compact_samples(results["samples"]), "load_avg_1m": round(os.getloadavg()[0], 1)}


def run_variant(variant: str, model: str, shape_name: str, limit: int, tasks_dir: str,
                python: str | None = None) -> dict:
    """One run of ``variant`` in a fresh process (its own vLLM scratch and request-cache folders; the
    compile cache kept, as a user's is: else every run compiles vLLM's CPU kernels again)."""
    from benchmarks.lib.launch import OFFLINE_ENV
    from benchmarks.lib.scenarios_more import VLLM_ENV
    from lm_eval_ext.vllm.replicas import inductor_cache_dir

    with tempfile.TemporaryDirectory(prefix="vllm_mc_") as scratch:
        env = dict(os.environ | OFFLINE_ENV | VLLM_ENV, TMPDIR=scratch, VLLM_RPC_BASE_PATH=scratch,
                   LM_EVAL_EXT_CACHE_DIR=str(Path(scratch) / "request-cache"),
                   TORCHINDUCTOR_CACHE_DIR=inductor_cache_dir())
        out = Path(scratch) / "row.json"
        command = [python or sys.executable, __file__, "--child", variant, "--model", model, "--shapes", shape_name,
                   "--limit", str(limit), "--tasks-dir", tasks_dir, "--row-out", str(out)]
        subprocess.run(command, env=env, check=True, cwd=ROOT)
        return json.loads(out.read_text())


# ---- the comparison ------------------------------------------------------------------------------
def totals(cost_report: dict) -> dict:
    """The cost report's loglikelihood rows summed over a shape's tasks."""
    rows = [r for r in cost_report.values() if r.get("request_type") == "loglikelihood"]
    keys = ("num_requests", "stock_tokens", "tokens_computed", "minimal_tokens", "cached_tokens", "probe_requests",
            "warmup_requests")
    out = {k: sum(r.get(k, 0) for r in rows) for k in keys}
    out["fallbacks"] = {}
    for row in rows:
        for cause, n in (row.get("fallbacks") or {}).items():
            out["fallbacks"][cause] = out["fallbacks"].get(cause, 0) + n
    out["block_size"] = next((r.get("block_size") for r in rows if r.get("block_size")), None)
    return out


def compare_shape(shape_name: str, stock_runs: list[dict], ext_runs: list[dict]) -> dict:
    """Medians of both sides, speedups, the token bound and how much of it the scoring phase reached."""
    from statistics import median

    from benchmarks.lib.agreement import compare_samples

    side = {name: {k: median(r[k] for r in runs) for k in ("wall_s", "build_s", "scoring_s")}
            for name, runs in (("stock", stock_runs), ("ext", ext_runs))}
    tokens = totals(ext_runs[0]["cost_report"])
    bound = tokens["stock_tokens"] / tokens["minimal_tokens"] if tokens["minimal_tokens"] else None
    scoring_speedup = side["stock"]["scoring_s"] / side["ext"]["scoring_s"]
    agreement = [compare_samples(stock_runs[0]["samples"], r["samples"]) for r in ext_runs]
    return {"shape": shape_name, "limit": ext_runs[0]["limit"], "repetitions": len(ext_runs), "stock": side["stock"],
            "ext": side["ext"], "e2e_speedup": side["stock"]["wall_s"] / side["ext"]["wall_s"],
            "scoring_speedup": scoring_speedup, "token_bound": bound,
            "of_bound": scoring_speedup / bound if bound else None, "tokens": tokens,
            "samples_agree": all(a["all_agree"] for a in agreement),
            "max_abs_loglikelihood_diff": max((a["max_abs_loglikelihood_diff"] or 0.0) for a in agreement),
            "same_metrics": all(r["metrics"] == stock_runs[0]["metrics"] for r in ext_runs)}


def format_table(rows: list[dict]) -> str:
    from benchmarks.lib.vllm_mc_shapes import SHAPES

    lines = ["| task shape | docs/task | stock e2e s (build) | vllm_ext e2e s (build) | e2e | stock scoring s "
             "| vllm_ext scoring s | scoring | token bound (block) | of bound | stock / computed / minimal tokens "
             "| probes | fallbacks | per sample |", "|---" * 14 + "|"]
    for r in rows:
        t = r["tokens"]
        bound = "-" if r["token_bound"] is None else f"{r['token_bound']:.2f}x ({t['block_size']})"
        of_bound = "-" if r["of_bound"] is None else f"{100 * r['of_bound']:.0f} %"
        lines.append(
            f"| {SHAPES[r['shape']].title} | {r['limit']} | {r['stock']['wall_s']:.1f} ({r['stock']['build_s']:.1f}) "
            f"| {r['ext']['wall_s']:.1f} ({r['ext']['build_s']:.1f}) | {r['e2e_speedup']:.2f}x "
            f"| {r['stock']['scoring_s']:.1f} | {r['ext']['scoring_s']:.1f} | {r['scoring_speedup']:.2f}x | {bound} "
            f"| {of_bound} | {t['stock_tokens']} / {t['tokens_computed']} / {t['minimal_tokens']} "
            f"| {t['probe_requests']} "
            f"| {json.dumps(t['fallbacks']) if t['fallbacks'] else '-'} "
            f"| {'equal' if r['samples_agree'] and r['same_metrics'] else 'DIFFER'} "
            f"(max dLL {r['max_abs_loglikelihood_diff']:.1e}) |")
    return "\n".join(lines)


def compare(model: str, shapes: list[str], limits: dict[str, int], repetitions: int, data_dir: Path,
            python: str | None = None, warmup: bool = True) -> list[dict]:
    """Every shape: a warm-up run per variant (OS and compile caches), then interleaved repetitions."""
    from benchmarks.lib.stats import interleaved_order
    from benchmarks.lib.vllm_mc_shapes import write_tasks

    tasks_dir = str(write_tasks(data_dir, Path(tempfile.mkdtemp(prefix="vllm_mc_tasks_"))))
    if warmup:
        for variant in VARIANTS:
            run_variant(variant, model, shapes[0], 2, tasks_dir, python)
    rows = []
    for shape_name in shapes:
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for _, variant in interleaved_order(list(VARIANTS), repetitions):
            runs[variant].append(run_variant(variant, model, shape_name, limits[shape_name], tasks_dir, python))
        rows.append(compare_shape(shape_name, runs["vllm"], runs["vllm_ext"]))
    return rows


# ---- the runner's scenario -----------------------------------------------------------------------
@scenario("vllm-mc", "stock vllm vs vllm_ext on multiple choice (ARC-Easy 0/5-shot, MMLU 5/0-shot), end to end, "
          "with the token bound")
def bench_scenario(ctx: Context) -> dict:
    from benchmarks.lib.scenarios_more import require_vllm, vllm_python
    from benchmarks.lib.vllm_mc_shapes import SHAPES, find_data

    require_vllm()
    data_dir = ctx.data_dir if ctx.data_dir and (ctx.data_dir / "arc_easy").exists() else find_data(ROOT)
    if data_dir is None:
        raise Skip("needs ../shared/data (arc_easy/, mmlu/) or BENCH_DATA_DIR")
    limits = {name: ctx.suite.limit(f"vllm-mc-{name}") or shape.default_limit for name, shape in SHAPES.items()}
    rows = compare(str(ctx.model_path), list(SHAPES), limits, ctx.suite.repetitions, data_dir, vllm_python())
    return {"rows": [], "runs": {"vllm-mc": rows}, "config": {"limits": limits, "engine_args": ENGINE_ARGS},
            "notes": ["time = engine start + evaluation, each run in a fresh process", format_table(rows)]}


def main() -> int:
    from benchmarks.lib.vllm_mc_shapes import SHAPES, find_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / ".models" / "smollm2-135m"))
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--limit", type=int, default=None, help="documents per task (default: each shape's own)")
    parser.add_argument("--repetitions", type=int, default=1)
    parser.add_argument("--no-warmup", action="store_true", help="skip the unmeasured first run of each variant")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--tasks-dir", help=argparse.SUPPRESS)
    parser.add_argument("--row-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shapes = args.shapes.split(",")
    if args.child:
        args.row_out.write_text(json.dumps(measure(args.child, args.model, shapes[0], args.limit, args.tasks_dir)))
        return 0
    data_dir = find_data(ROOT)
    if data_dir is None:
        raise SystemExit("needs ../shared/data (arc_easy/, mmlu/) or BENCH_DATA_DIR")
    limits = {name: args.limit or SHAPES[name].default_limit for name in shapes}
    rows = compare(args.model, shapes, limits, args.repetitions, data_dir, warmup=not args.no_warmup)
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
