"""Stock lm-eval ``vllm`` (data parallel through Ray) vs ``vllm_ext`` (persistent replicas), one run.

Each variant runs in its own child process (same model, tasks, engine settings) so that neither
inherits the other's Ray cluster, threads or environment. Reported per variant: wall time
(model construction + evaluation), engine starts (model loads), and tokens/s, where the tokens are
counted the same way for both from the logged samples, as every benchmark row counts them
(:func:`benchmarks.lib.probes.workload`).

Stock's engine starts are counted by wrapping ``VLLM._model_generate``: with
``data_parallel_size=N`` every call builds N fresh ``LLM`` objects inside Ray tasks. ``vllm_ext``
runs with its request cache off, so every repetition computes everything.

    python benchmarks/compare_vllm.py --model .models/smollm2-135m --data-parallel-size 2

``--suite mc`` runs real multiple choice instead: ARC-Easy 0-shot and MMLU 5-shot (a few subjects)
from ``../shared/data`` through lm-eval's own task definitions pointed at local files
(:mod:`benchmarks.lib.real_tasks`), in process (``--data-parallel-size 1``): what vLLM's prefix-cache
skip costs stock, and what ``score_with_prefix_cache`` saves.

    python benchmarks/compare_vllm.py --suite mc --data-parallel-size 1 --limit 20

Also the ``compare-vllm`` scenario of ``benchmarks/run.py`` (:func:`bench_scenario`): warm-up, then
interleaved repetitions of both variants, one table row with per-sample agreement.
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

SUITE_TASKS = ["ext_arith_mc", "ext_copy_gen", "ext_prose_rolling"]
VARIANTS = ("vllm", "vllm_ext")
VLLM_CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo",
    "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    # vLLM divides by its progress bar's elapsed time, 0 when TQDM_DISABLE=1 (see scenarios_more.VLLM_ENV)
    "TQDM_DISABLE": "",
}
#: What stock's Ray data parallel needs on a machine without GPUs (docs/upstream.md).
STOCK_RAY_ENV = {
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
}


def suite_tasks(suite: str, scratch: Path) -> tuple[list[str], list[str]]:
    """(tasks, include path) of a suite: ``shipped`` (tasks/) or ``mc`` (ARC-Easy + MMLU, local files)."""
    if suite == "shipped":
        return SUITE_TASKS, [str(ROOT / "tasks")]
    from benchmarks.lib import real_tasks

    data_root = real_tasks.find_multiple_choice_data(ROOT)
    if data_root is None:
        raise SystemExit("--suite mc needs ../shared/data (arc_easy/, mmlu/) or BENCH_DATA_DIR")
    subjects = real_tasks.VLLM_MMLU_SUBJECTS
    mmlu = [real_tasks.mmlu_task(s) for s in subjects]
    tasks = {"arc": [real_tasks.ARC], "mmlu": mmlu}.get(suite, [real_tasks.ARC, *mmlu])
    return tasks, [str(real_tasks.write_tasks(data_root, scratch / "tasks", subjects))]


def _evaluate(lm, limit: int | None, suite: str = "shipped") -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks, include = suite_tasks(suite, Path(tempfile.mkdtemp(prefix="compare_vllm_tasks_")))
    manager = TaskManager(include_path=include, include_defaults=False)
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, log_samples=True,
                                   limit=limit, bootstrap_iters=0)


def _build_stock(model: str, data_parallel_size: int, engine_args: dict):
    from lm_eval.models.vllm_causallms import VLLM

    starts = {"count": 0 if data_parallel_size > 1 else 1}
    original = VLLM._model_generate

    def counting_model_generate(self, *args, **kwargs):
        if self.data_parallel_size > 1:
            starts["count"] += self.data_parallel_size  # one new LLM per replica per call
        return original(self, *args, **kwargs)

    VLLM._model_generate = counting_model_generate
    lm = VLLM(pretrained=model, data_parallel_size=data_parallel_size, **engine_args)
    return lm, lambda: starts["count"]


def _build_ext(model: str, data_parallel_size: int, engine_args: dict):
    from lm_eval_ext.vllm.adapter import VllmExtLM

    lm = VllmExtLM(pretrained=model, data_parallel_size=data_parallel_size, cache="off", **engine_args)
    return lm, lambda: lm.num_engine_starts


def measure_variant(variant: str, model: str, data_parallel_size: int, limit: int | None,
                    suite: str = "shipped") -> dict:
    """Run one variant in this process; returns its row (call through :func:`run_variant`)."""
    from benchmarks.lib.agreement import compact_samples
    from benchmarks.lib.probes import workload
    from benchmarks.lib.worker import count_tokens_with, output_types

    engine_args = {"dtype": "float32", "enforce_eager": True, "seed": 1234}
    build = _build_stock if variant == "vllm" else _build_ext
    started_s = time.perf_counter()
    lm, engine_starts = build(model, data_parallel_size, engine_args)
    if variant == "vllm_ext":
        lm.engine  # noqa: B018 (start it now, as stock does in its constructor: build_s is like for like)
    built_s = time.perf_counter()
    results = _evaluate(lm, limit, suite)
    wall_s = time.perf_counter() - started_s
    work = workload(results["samples"], output_types(results), count_tokens_with(lm))
    tokens, requests = sum(w["tokens"] for w in work.values()), sum(w["requests"] for w in work.values())
    if variant == "vllm_ext":
        lm.close()
    metrics = {task: {k: v for k, v in r.items() if isinstance(v, float)} for task, r in results["results"].items()}
    return {"model": variant, "data_parallel_size": data_parallel_size, "wall_s": round(wall_s, 1),
            "build_s": round(built_s - started_s, 1), "eval_s": round(started_s + wall_s - built_s, 1),
            "engine_starts": engine_starts(), "requests": requests, "tokens": tokens,
            "tokens_per_s": round(tokens / wall_s, 1), "load_avg_1m": round(os.getloadavg()[0], 1),
            "metrics": metrics, "workload": work, "samples": compact_samples(results["samples"])}


def run_variant(variant: str, model: str, data_parallel_size: int = 2, limit: int | None = None,
                python: str | None = None, suite: str = "shipped") -> dict:
    """Run one variant (``vllm`` or ``vllm_ext``) in a child process and return its row."""
    env = dict(os.environ, **VLLM_CPU_ENV)
    if variant == "vllm":
        # stock asks Ray for one GPU per replica (num_gpus=tensor_parallel_size); pretend they exist
        env.update(STOCK_RAY_ENV, RAY_OVERRIDE_RESOURCES=json.dumps({"GPU": data_parallel_size}))
    with tempfile.TemporaryDirectory(prefix="compare_vllm_") as scratch:
        env.update(TMPDIR=scratch, VLLM_RPC_BASE_PATH=scratch)
        out = Path(scratch) / "row.json"
        command = [python or sys.executable, __file__, "--variant", variant, "--model", model,
                   "--data-parallel-size", str(data_parallel_size), "--row-out", str(out), "--suite", suite]
        if limit:
            command += ["--limit", str(limit)]
        subprocess.run(command, env=env, check=True, cwd=ROOT)
        return json.loads(out.read_text())


def compare_vllm(model: str, data_parallel_size: int = 2, limit: int | None = None, suite: str = "shipped") -> dict:
    """Both variants, stock first; ``speedup`` is stock wall time / vllm_ext wall time."""
    from benchmarks.lib.agreement import compare_samples

    stock = run_variant("vllm", model, data_parallel_size, limit, suite=suite)
    ext = run_variant("vllm_ext", model, data_parallel_size, limit, suite=suite)
    agreement = compare_samples(stock.pop("samples"), ext.pop("samples"))
    return {"rows": [stock, ext], "speedup": round(stock["wall_s"] / ext["wall_s"], 2),
            "eval_speedup": round(stock["eval_s"] / ext["eval_s"], 2) if ext.get("eval_s") else None,
            "same_metrics": stock["metrics"] == ext["metrics"], "samples_agree": agreement["all_agree"],
            "max_abs_loglikelihood_diff": agreement["max_abs_loglikelihood_diff"]}


def _step(label: str, variant: str, repetition: int | None, run) -> dict:
    """One run as a benchmark-runner step (see benchmarks/lib/rows.py); a failed run keeps its error."""
    step = {"label": label, "impl": variant, "measured": repetition is not None, "repetition": repetition}
    try:
        row = run()
    except subprocess.CalledProcessError as exc:
        return step | {"error": f"{variant} child exited with {exc.returncode}"}
    # every request was computed (stock has no cache, vllm_ext runs with cache=off): no hits to report
    no_hits = {"by_task": {task: {"cache_hits": 0} for task in row["workload"]}}
    return step | {"eval_s": row["wall_s"], "engine_starts": row["engine_starts"], "workload": row["workload"],
                   "samples": row["samples"], "load_avg_1m": row["load_avg_1m"], "extension": no_hits}


def bench_scenario(ctx) -> dict:
    """The runner's ``compare-vllm`` scenario: a warm-up per variant, then interleaved repetitions."""
    from benchmarks.lib.rows import make_row
    from benchmarks.lib.scenarios import Skip, failed_steps, module_available, strip_outputs
    from benchmarks.lib.scenarios_more import vllm_python
    from benchmarks.lib.stats import interleaved_order

    size, python = 2, vllm_python()
    if (len(ctx.machine["gpus"]) if ctx.use_gpu else ctx.num_cores) < size:
        raise Skip(f"data parallel {size} needs {size} {'GPUs' if ctx.use_gpu else 'CPU cores'}")
    if not module_available("ray", python):
        raise Skip("stock vllm data parallel needs ray (`make bench-vllm` installs it)")
    model, limit = str(ctx.model_path), ctx.suite.limit("compare-vllm")
    steps = [_step(f"warmup-{v}", v, None, lambda v=v: run_variant(v, model, size, ctx.suite.warmup_limit, python))
             for v in VARIANTS]
    steps += [_step(f"{v}-r{rep}", v, rep, lambda v=v: run_variant(v, model, size, limit, python))
              for rep, v in interleaved_order(list(VARIANTS), ctx.suite.repetitions)]
    row = make_row("vllm DP 2, shipped tasks: Ray per request type vs persistent replicas", steps,
                   baseline=("vllm", ""), candidate=("vllm_ext", ""), labels=("stock vllm DP2", "vllm_ext DP2"),
                   tasks=SUITE_TASKS)
    starts = {v: sorted({s["engine_starts"] for s in steps if s["impl"] == v and "error" not in s}) for v in VARIANTS}
    run = {"steps": steps}
    notes = ["time = model construction + evaluation, each run in a fresh process",
             f"engine starts per run: stock vllm {starts['vllm']}, vllm_ext {starts['vllm_ext']}"]
    return {"rows": [row], "runs": {"compare-vllm": strip_outputs(run)}, "notes": notes + failed_steps(run),
            "config": {"tasks": SUITE_TASKS, "limit": limit, "data_parallel_size": size}}


def format_table(comparison: dict) -> str:
    lines = ["| model | data_parallel_size | wall_s | build_s | eval_s | engine_starts | tokens | tokens_per_s "
             "| load_avg_1m at end |", "|---|---|---|---|---|---|---|---|---|"]
    for row in comparison["rows"]:
        lines.append(f"| {row['model']} | {row['data_parallel_size']} | {row['wall_s']} | {row.get('build_s', '-')} "
                     f"| {row.get('eval_s', '-')} | {row['engine_starts']} "
                     f"| {row['tokens']} | {row['tokens_per_s']} | {row['load_avg_1m']} |")
    eval_speedup = comparison.get("eval_speedup")
    lines.append(f"\nspeedup (stock wall / vllm_ext wall): {comparison['speedup']}x"
                 + (f" (evaluation only, engines built: {eval_speedup}x)" if eval_speedup else "") + "; "
                 f"same metrics: {comparison['same_metrics']}; per-sample agreement: {comparison['samples_agree']} "
                 f"(max |loglikelihood diff| {comparison['max_abs_loglikelihood_diff']})")
    for row in comparison["rows"]:
        lines.append(f"metrics {row['model']}: " + json.dumps({t: {k: round(v, 4) for k, v in m.items()}
                                                               for t, m in row["metrics"].items()}, sort_keys=True))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / ".models" / "smollm2-135m"))
    parser.add_argument("--data-parallel-size", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    parser.add_argument("--suite", choices=("shipped", "mc", "arc", "mmlu"), default="shipped",
                        help="shipped tasks (default) or real multiple choice: ARC-Easy 0-shot, MMLU 5-shot")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--row-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json-out", type=Path, help="also write the comparison as JSON here")
    args = parser.parse_args()
    if args.variant:  # child process: one variant
        row = measure_variant(args.variant, args.model, args.data_parallel_size, args.limit, args.suite)
        args.row_out.write_text(json.dumps(row))
        return 0
    comparison = compare_vllm(args.model, args.data_parallel_size, args.limit, args.suite)
    if args.json_out:
        args.json_out.write_text(json.dumps(comparison, indent=2))
    print(format_table(comparison))
    return 0


if __name__ == "__main__":
    sys.exit(main())
