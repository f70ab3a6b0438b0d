"""Stock lm-eval ``vllm`` (data parallel through Ray) vs ``vllm_ext`` (persistent replicas), one run.

Each variant runs in its own child process (same model, tasks, engine settings) so that neither
inherits the other's Ray cluster, threads or environment. Reported per variant: wall time
(model construction + evaluation), engine starts (model loads), and tokens/s, where the tokens are
counted the same way for both from the logged samples (scored prompt+continuation tokens,
rolling-document tokens, prompt + generated tokens for generation).

Stock's engine starts are counted by wrapping ``VLLM._model_generate``: with
``data_parallel_size=N`` every call builds N fresh ``LLM`` objects inside Ray tasks.

    python benchmarks/compare_vllm.py --model .models/smollm2-135m --data-parallel-size 2
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
SUITE_TASKS = ["ext_arith_mc", "ext_copy_gen", "ext_prose_rolling"]
VLLM_CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo",
    "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
}
#: What stock's Ray data parallel needs on a machine without GPUs (TOOLCHAIN.md).
STOCK_RAY_ENV = {
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
}


def count_suite_tokens(samples: dict, tokenizer) -> int:
    """Tokens the model had to process for the logged samples, identical for both variants.

    ``samples[task]`` rows hold ``arguments`` (one ``req.args`` tuple per request) and ``resps``:
    loglikelihood ``(context, continuation)``, rolling ``(text,)``, generation
    ``(context, gen_kwargs)`` with the generated text in ``resps``.
    """
    total = 0
    for task_samples in samples.values():
        for sample in task_samples:
            for args, resps in zip(sample["arguments"], sample["resps"]):
                texts = [a for a in args if isinstance(a, str)]
                if isinstance(args[-1], dict):  # generate_until: prompt + what was generated
                    texts = [args[0], resps[0]]
                total += sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts)
    return total


def _evaluate(lm, limit: int | None) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(ROOT / "tasks")], include_defaults=False)
    return lm_eval.simple_evaluate(model=lm, tasks=SUITE_TASKS, task_manager=manager, log_samples=True,
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
    from lm_eval_ext.adapters.vllm import VllmExtLM

    lm = VllmExtLM(pretrained=model, data_parallel_size=data_parallel_size, **engine_args)
    return lm, lambda: lm.num_engine_starts


def measure_variant(variant: str, model: str, data_parallel_size: int, limit: int | None) -> dict:
    """Run one variant in this process; returns its row (call through :func:`run_variant`)."""
    engine_args = {"dtype": "float32", "enforce_eager": True, "seed": 1234}
    build = _build_stock if variant == "vllm" else _build_ext
    started_s = time.perf_counter()
    lm, engine_starts = build(model, data_parallel_size, engine_args)
    results = _evaluate(lm, limit)
    wall_s = time.perf_counter() - started_s
    tokens = count_suite_tokens(results["samples"], lm.tokenizer)
    if variant == "vllm_ext":
        lm.close()
    metrics = {task: {k: v for k, v in r.items() if isinstance(v, float)} for task, r in results["results"].items()}
    return {"model": variant, "data_parallel_size": data_parallel_size, "wall_s": round(wall_s, 1),
            "engine_starts": engine_starts(), "tokens": tokens, "tokens_per_s": round(tokens / wall_s, 1),
            "load_avg_1m": round(os.getloadavg()[0], 1), "metrics": metrics}


def run_variant(variant: str, model: str, data_parallel_size: int = 2, limit: int | None = None) -> dict:
    """Run one variant (``vllm`` or ``vllm_ext``) in a child process and return its row."""
    env = dict(os.environ, **VLLM_CPU_ENV)
    if variant == "vllm":
        # stock asks Ray for one GPU per replica (num_gpus=tensor_parallel_size); pretend they exist
        env.update(STOCK_RAY_ENV, RAY_OVERRIDE_RESOURCES=json.dumps({"GPU": data_parallel_size}))
    with tempfile.TemporaryDirectory(prefix="compare_vllm_") as scratch:
        env.update(TMPDIR=scratch, VLLM_RPC_BASE_PATH=scratch)
        out = Path(scratch) / "row.json"
        command = [sys.executable, __file__, "--variant", variant, "--model", model,
                   "--data-parallel-size", str(data_parallel_size), "--row-out", str(out)]
        if limit:
            command += ["--limit", str(limit)]
        subprocess.run(command, env=env, check=True, cwd=ROOT)
        return json.loads(out.read_text())


def compare_vllm(model: str, data_parallel_size: int = 2, limit: int | None = None) -> dict:
    """Both variants, stock first; ``speedup`` is stock wall time / vllm_ext wall time."""
    stock = run_variant("vllm", model, data_parallel_size, limit)
    ext = run_variant("vllm_ext", model, data_parallel_size, limit)
    return {"rows": [stock, ext], "speedup": round(stock["wall_s"] / ext["wall_s"], 2),
            "same_metrics": stock["metrics"] == ext["metrics"]}


def format_table(comparison: dict) -> str:
    lines = ["| model | data_parallel_size | wall_s | engine_starts | tokens | tokens_per_s | load_avg_1m at end |",
             "|---|---|---|---|---|---|---|"]
    for row in comparison["rows"]:
        lines.append(f"| {row['model']} | {row['data_parallel_size']} | {row['wall_s']} | {row['engine_starts']} "
                     f"| {row['tokens']} | {row['tokens_per_s']} | {row['load_avg_1m']} |")
    lines.append(f"\nspeedup (stock wall / vllm_ext wall): {comparison['speedup']}x; "
                 f"same metrics: {comparison['same_metrics']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / ".models" / "smollm2-135m"))
    parser.add_argument("--data-parallel-size", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    parser.add_argument("--variant", choices=["vllm", "vllm_ext"], help=argparse.SUPPRESS)
    parser.add_argument("--row-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json-out", type=Path, help="also write the comparison as JSON here")
    args = parser.parse_args()
    if args.variant:  # child process: one variant
        row = measure_variant(args.variant, args.model, args.data_parallel_size, args.limit)
        args.row_out.write_text(json.dumps(row))
        return 0
    comparison = compare_vllm(args.model, args.data_parallel_size, args.limit)
    if args.json_out:
        args.json_out.write_text(json.dumps(comparison, indent=2))
    print(format_table(comparison))
    return 0


if __name__ == "__main__":
    sys.exit(main())
