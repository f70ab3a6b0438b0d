"""Stock lm-eval ``hf`` vs ``hf_ext`` on one model and the shipped tasks, in one script.

A benchmark, not a test: it prints and writes (JSON) per task the wall time, tokens/s, peak RSS
and speedup of ``hf_ext`` over stock's best configuration, checks that per-sample results agree,
and measures the model's peak forward throughput (one large unpadded batch) so the evaluation's
efficiency against that ceiling is visible.

Every configuration runs in its own subprocess (peak RSS is a per-process figure; a fresh
process also keeps allocator state from leaking between runs). The model is loaded before the
clock starts; wall time is lm-eval's ``simple_evaluate`` for one task.

    python benchmarks/compare_hf.py --model .models/smollm2-135m --out bench.json

Importable: :func:`compare` returns the same dict the script writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: benchmarks.lib is imported from the checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.lib import gsm8k  # noqa: E402
from benchmarks.lib.compare_summary import (  # noqa: E402
    EXT, EXT_UNSHARED, efficiency, merge_repetitions, runner_rows, summarize_task,
)
from benchmarks.lib.stats import interleaved_order  # noqa: E402

TASKS = ("ext_arith_mc", "ext_copy_gen", "ext_prose_rolling")
#: lm-eval's own gsm8k definition over ../shared/data (benchmarks/lib/gsm8k.py): generations of
#: real length (few-shot prompts of ~1,000 tokens), so a run's fixed costs do not dominate
GSM8K_TASK = gsm8k.TASK_NAME
GENERATION_TASKS = ("ext_copy_gen", GSM8K_TASK)
DEFAULT_LIMITS = {GSM8K_TASK: 8}
LONG_TASK = "ext_long_rolling"
#: Stock batch_size=auto probes generation and rolling at the model's full max_length (SmolLM2:
#: 8192): measured >10 min and 15 GB RSS here, so it is only run for these unless asked.
STOCK_AUTO_SAFE = ("ext_arith_mc",)
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

logger = logging.getLogger("lm_eval_ext.benchmarks.compare_hf")


# ---- worker side (runs in a subprocess) ---------------------------------------------------------
def _responses(samples: list[dict]) -> dict[str, object]:
    out = {}
    for sample in samples:
        resps = [r[0] for r in sample["resps"]]
        out[str(sample["doc_id"])] = [list(r) if isinstance(r, tuple) else r for r in resps]
    return out


def _build_lm(spec: dict):
    if spec["backend"] == "hf":
        from lm_eval.models.huggingface import HFLM

        return HFLM(**spec["model_args"])
    from lm_eval_ext.hf.adapter import HfExtLM

    return HfExtLM(**spec["model_args"])


def _time_request_methods(lm) -> dict[str, float]:
    """Seconds spent inside the LM's request methods (what lm-eval's evaluator calls), per type:
    the model's share of the evaluation, without task building, metrics and bootstrap."""
    spent: dict[str, float] = {}
    for name in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        method = getattr(lm, name)

        def timed(*args, _method=method, _name=name, **kwargs):
            start_s = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - start_s

        setattr(lm, name, timed)
    return spent


def run_worker(spec: dict) -> dict:
    """Evaluate one task with one configuration in this process; model load is not timed."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    lm = _build_lm(spec)
    model_s = _time_request_methods(lm)
    manager = TaskManager(include_path=spec["include_paths"], include_defaults=False)
    start_s = time.perf_counter()
    out = simple_evaluate(model=lm, tasks=[spec["task"]], task_manager=manager, log_samples=True,
                          verbosity="WARNING", limit=spec.get("limit"))
    wall_s = time.perf_counter() - start_s
    metrics = {k: v for k, v in out["results"][spec["task"]].items()
               if isinstance(v, float) and "stderr" not in k}
    return {
        "wall_s": wall_s,
        "model_s": sum(model_s.values()),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "metrics": metrics,
        "responses": _responses(out["samples"][spec["task"]]),
        "cost_report": out["config"].get("cost_report", {}),
    }


def peak_forward_worker(spec: dict) -> dict:
    """tokens/s of the model's cheapest full pass (decoder + head at the last position) over one
    large unpadded batch of real text: the ceiling any scorer can reach on this machine."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32).eval()
    text = " ".join(json.loads(line)["text"] for line in (ROOT / "tasks/data/prose_test.jsonl").open())
    ids = tokenizer(text)["input_ids"]
    rows, width = spec["batch_rows"], spec["row_tokens"]
    ids = (ids * (rows * width // len(ids) + 1))[: rows * width]
    batch = torch.tensor(ids).view(rows, width)
    results = []
    with torch.no_grad():
        model(batch[:1], logits_to_keep=1)  # warm-up
        for _ in range(spec["repeats"]):
            start_s = time.perf_counter()
            model(batch, logits_to_keep=1, use_cache=False)
            results.append(rows * width / (time.perf_counter() - start_s))
    return {"tokens_per_s": max(results), "batch_rows": rows, "row_tokens": width,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


# ---- driver side ------------------------------------------------------------------------------
def _run_subprocess(kind: str, spec: dict, timeout_s: float) -> dict:
    env = {**os.environ, **OFFLINE, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
    out_path = handle.name + ".out"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, handle.name, out_path]
    start_s = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, timeout=timeout_s, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr or "")[-1500:]
        return {"error": f"exit {done.returncode} after {time.perf_counter() - start_s:.0f} s", "stderr_tail": tail}
    return json.loads(Path(out_path).read_text())


def write_long_task(folder: Path, num_docs: int = 4, repeats: int = 3) -> Path:
    """A rolling-loglikelihood task whose documents are ~repeats x 5k tokens (SmolLM2 tokenizer)."""
    paragraphs = [json.loads(line)["text"] for line in (ROOT / "tasks/data/prose_test.jsonl").open()]
    data = folder / "long_test.jsonl"
    with data.open("w") as handle:
        for i in range(num_docs):
            rotated = paragraphs[i:] + paragraphs[:i]
            handle.write(json.dumps({"text": " ".join(rotated * repeats)}) + "\n")
    (folder / f"{LONG_TASK}.yaml").write_text(
        f"task: {LONG_TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
        "metadata:\n  version: 1.0\n"
    )
    return folder


def _machine() -> dict:
    import platform

    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_1_5_15": os.getloadavg()}
    try:
        import psutil

        info["ram_total_bytes"] = psutil.virtual_memory().total
    except ImportError:
        pass
    return info


def _model_args(model: str, device: str, dtype: str, **extra) -> dict:
    return {"pretrained": model, "device": device, "dtype": dtype, **extra}


def task_configurations(task: str, fixed_sizes, generation_fixed_sizes, stock_auto: bool,
                        unshared: bool) -> dict[str, dict | None]:
    """Configuration name -> (backend and model_args extras), or None where skipped (PURE)."""
    sizes = generation_fixed_sizes if task in GENERATION_TASKS else fixed_sizes
    configs: dict[str, dict | None] = {f"hf batch_size={n}": {"backend": "hf", "batch_size": n} for n in sizes}
    configs["hf batch_size=auto"] = {"backend": "hf", "batch_size": "auto"} if stock_auto else None
    # request cache off: a repetition (or an earlier run) would otherwise read its answers
    configs[EXT] = {"backend": "hf_ext", "batch_size": "auto", "max_batch_tokens": "auto", "cache": "off"}
    if unshared:
        configs[EXT_UNSHARED] = {**configs[EXT], "share_contexts": "false"}
    return configs


def run_task(model: str, task: str, *, include_paths: list[str], configs: dict, timeout_s: float,
             limit: int | None, repetitions: int, device: str, dtype: str) -> dict:
    """Every configuration of one task, ``repetitions`` times, interleaved; stock's best is the
    stock configuration with the lowest median."""
    reps: dict[str, list[dict]] = {name: [] for name, c in configs.items() if c}
    for rep, name in interleaved_order(list(reps), repetitions):
        extra = dict(configs[name])
        backend = extra.pop("backend")
        spec = {"backend": backend, "task": task, "include_paths": include_paths, "limit": limit,
                "model_args": _model_args(model, device, dtype, **extra)}
        logger.info("running %s %s (repetition %d)", task, name, rep + 1)
        reps[name].append(_run_subprocess("evaluate", spec, timeout_s))
    runs = {name: merge_repetitions(results) for name, results in reps.items()}
    runs |= {name: {"skipped": "stock auto probes at max_length (docs/upstream.md: >10 min, 15 GB RSS on this CPU)"}
             for name, c in configs.items() if c is None}
    return summarize_task(task, runs)


def compare(model: str, tasks=TASKS, *, fixed_sizes=(8, 16, 32), generation_fixed_sizes=(1, 8, 16),
            stock_auto_all: bool = False, timeout_s: float = 900, long_context: bool = True,
            forward_rows: int = 8, forward_row_tokens: int = 512, limits: dict | None = None,
            long_docs: int = 4, long_repeats: int = 3, repetitions: int = 1, data_dir: Path | None = None,
            device: str = "cpu", dtype: str = "float32") -> dict:
    """Run everything; returns the dict that ``main`` prints and writes. ``data_dir`` holds GSM8K's
    ``train.jsonl`` and ``test.jsonl``, needed when ``tasks`` has :data:`GSM8K_TASK`."""
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    result = {"model": model, "machine_before": _machine(), "limits": limits, "repetitions": repetitions,
              "tasks": {}}
    result["peak_forward"] = _run_subprocess("peak_forward", {
        "model": model, "batch_rows": forward_rows, "row_tokens": forward_row_tokens, "repeats": 3}, timeout_s)
    with tempfile.TemporaryDirectory() as folder:
        include = [str(ROOT / "tasks")]
        if GSM8K_TASK in tasks:
            include.append(str(gsm8k.write_local_task(Path(data_dir), Path(folder) / "gsm8k")))
        for task in tasks:
            configs = task_configurations(task, fixed_sizes, generation_fixed_sizes,
                                          stock_auto_all or task in STOCK_AUTO_SAFE, task == "ext_arith_mc")
            result["tasks"][task] = run_task(model, task, include_paths=include, configs=configs,
                                             timeout_s=timeout_s, limit=limits.get(task),
                                             repetitions=repetitions, device=device, dtype=dtype)
        if long_context:
            result["long_context"] = _long_context_run(model, Path(folder), include, timeout_s, long_docs,
                                                       long_repeats, device, dtype)
    result["machine_after"] = _machine()
    result["efficiency"] = efficiency(result)
    return result


def _long_context_run(model, folder: Path, include, timeout_s, long_docs, long_repeats, device, dtype) -> dict:
    write_long_task(folder, num_docs=long_docs, repeats=long_repeats)
    spec = {"backend": "hf_ext", "task": LONG_TASK, "include_paths": include + [str(folder)],
            "model_args": _model_args(model, device, dtype, batch_size="auto", max_batch_tokens="auto", cache="off")}
    run = _run_subprocess("evaluate", spec, timeout_s)
    run.pop("responses", None)
    return run


def format_table(result: dict) -> str:
    mib = 2**20
    lines = [f"model: {result['model']}  documents per task: {result.get('limits') or 'all'}  "
             f"repetitions: {result.get('repetitions', 1)} (wall_s: median, configurations interleaved)",
             f"machine: {result['machine_before'].get('cpus')} CPUs, load avg before "
             f"{tuple(round(x, 2) for x in result['machine_before']['load_avg_1_5_15'])}, after "
             f"{tuple(round(x, 2) for x in result['machine_after']['load_avg_1_5_15'])}",
             f"{'task':<18} {'configuration':<30} {'wall_s':>8} {'model_s':>8} {'useful tok/s':>12} "
             f"{'peak RSS MiB':>12}"]
    for task, entry in result["tasks"].items():
        for name, run in entry["runs"].items():
            if "wall_s" in run:
                model_s = f"{run['model_s']:>8.2f}" if "model_s" in run else f"{'-':>8}"
                lines.append(f"{task:<18} {name:<30} {run['wall_s']:>8.2f} {model_s} "
                             f"{run.get('useful_tokens_per_s', 0):>12.0f} {run['peak_rss_bytes'] / mib:>12.0f}")
            else:
                lines.append(f"{task:<18} {name:<30} {run.get('skipped') or run.get('error')}")
        if "speedup_vs_best_stock" in entry:
            agree = entry["agreement_vs_best_stock"]
            verdict = entry.get("comparison", {}).get("verdict", "")
            model = (f" (model time {entry['model_speedup_vs_best_stock']:.2f}x)"
                     if "model_speedup_vs_best_stock" in entry else "")
            lines.append(f"{'':<18} -> speedup {entry['speedup_vs_best_stock']:.2f}x ({verdict}){model} vs {entry['best_stock']}; "
                         f"peak RSS {entry['peak_rss_ratio_vs_best_stock']:.2f}x; max |dLL| "
                         f"{agree['max_abs_loglikelihood_diff']:.2e} (rel {agree['max_rel_loglikelihood_diff']:.1e}); "
                         f"is_greedy diffs {agree['is_greedy_mismatches']}; generation diffs "
                         f"{agree['generation_mismatches']}; metrics equal {agree['metrics_equal']}")
    eff = result.get("efficiency") or {}
    if eff:
        lines.append(f"peak forward {eff['peak_forward_tokens_per_s']:.0f} tok/s; unshared scoring useful "
                     f"{eff['unshared_engine_tokens_per_s']:.0f} tok/s in batches "
                     f"({100 * eff['engine_fraction_of_peak']:.0f}% of peak), "
                     f"{eff['unshared_end_to_end_tokens_per_s']:.0f} tok/s end to end "
                     f"({100 * eff['end_to_end_fraction_of_peak']:.0f}%)")
    long_run = result.get("long_context")
    if long_run:
        status = "ok" if "wall_s" in long_run else long_run.get("error")
        detail = (f"{long_run['wall_s']:.1f} s, peak RSS {long_run['peak_rss_bytes'] / mib:.0f} MiB"
                  if "wall_s" in long_run else "")
        lines.append(f"long context ({LONG_TASK}, hf_ext max_batch_tokens=auto): {status} {detail}")
    return "\n".join(lines)


def bench_scenario(ctx) -> dict:
    """``benchmarks/run.py``'s ``compare-hf`` scenario: this script with the suite's model, device,
    dtype and repetitions; documents per task from the suite's ``compare-hf`` limit (GSM8K:
    ``compare-hf-gsm8k``), GSM8K only where its data is found."""
    data_dir = ctx.data_dir / "gsm8k" if ctx.data_dir and (ctx.data_dir / "gsm8k" / "test.jsonl").exists() else None
    tasks = TASKS + ((GSM8K_TASK,) if data_dir else ())
    limits = {t: ctx.suite.limit("compare-hf") for t in TASKS} | {GSM8K_TASK: ctx.suite.limit("compare-hf-gsm8k")}
    result = compare(str(ctx.model_path), tasks, repetitions=ctx.suite.repetitions, limits=limits,
                     timeout_s=ctx.suite.worker_timeout_s, data_dir=data_dir, device=ctx.suite.device,
                     dtype=ctx.suite.dtype)
    notes = [] if data_dir else ["GSM8K data not found (../shared/data/gsm8k): generation measured on ext_copy_gen only"]
    notes += [line for line in format_table(result).splitlines() if line.startswith(("peak forward", "long context"))]
    config = {"tasks": list(tasks), "limits": limits, "repetitions": ctx.suite.repetitions}
    return {"rows": runner_rows(result), "runs": {"compare_hf": result}, "config": config, "notes": notes}


def main(argv: list[str] | None = None) -> int:
    data_dir = gsm8k.find_data_dir(ROOT)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / ".models" / "smollm2-135m"))
    parser.add_argument("--tasks", default=",".join(TASKS + ((GSM8K_TASK,) if data_dir else ())),
                        help=f"{GSM8K_TASK} needs --data-dir (default: found when present)")
    parser.add_argument("--data-dir", type=Path, default=data_dir, help="folder holding GSM8K's {train,test}.jsonl")
    parser.add_argument("--fixed-sizes", default="8,16,32", help="stock batch sizes to try on scoring tasks")
    parser.add_argument("--generation-fixed-sizes", default="1,8,16", help="stock batch sizes on generation tasks")
    parser.add_argument("--repetitions", type=int, default=1, help="runs per configuration, interleaved")
    parser.add_argument("--stock-auto-all", action="store_true", help="also run stock auto on gen/rolling")
    parser.add_argument("--no-long-context", action="store_true")
    parser.add_argument("--timeout-s", type=float, default=900)
    parser.add_argument("--out", default="compare_hf.json")
    parser.add_argument("--limit", default="", help="documents per task, e.g. ext_arith_mc=20,ext_copy_gen=10 "
                        f"(default {DEFAULT_LIMITS})")
    parser.add_argument("--forward-rows", type=int, default=8, help="rows of 512 tokens in the peak forward")
    parser.add_argument("--long-docs", type=int, default=4)
    parser.add_argument("--long-repeats", type=int, default=3, help="x ~5k tokens per long document")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, spec_path, out_path = args.worker
        spec = json.loads(Path(spec_path).read_text())
        out = run_worker(spec) if kind == "evaluate" else peak_forward_worker(spec)
        Path(out_path).write_text(json.dumps(out, default=float))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sizes = {name: tuple(int(n) for n in getattr(args, name).split(",")) for name in ("fixed_sizes", "generation_fixed_sizes")}
    result = compare(args.model, tuple(args.tasks.split(",")), **sizes, repetitions=args.repetitions,
                     stock_auto_all=args.stock_auto_all, timeout_s=args.timeout_s,
                     long_context=not args.no_long_context, forward_rows=args.forward_rows,
                     limits={k: int(v) for k, v in (p.split("=") for p in args.limit.split(",") if p)},
                     long_docs=args.long_docs, long_repeats=args.long_repeats, data_dir=args.data_dir)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    sys.stdout.write(format_table(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
