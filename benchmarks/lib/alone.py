"""One lm-eval GSM8K run alone in this fresh process: its wall time, its peak RSS, and (``hf_ext``)
where the continuous loop's time goes, step by step.

The figures in docs/engine.md's "What the figures say" for GSM8K's memory and its decode-only
steps come from here: each side in its own process (a worker that ran the other side first would
report the larger of the two peaks), the same documents and few-shot seed as the ``generation``
scenario. Run it alone on the machine (it times)::

    python -m benchmarks.lib.alone --model hf --model-args batch_size=1,device=cpu
    python -m benchmarks.lib.alone --model hf_ext --model-args cache=off --steps
    python -m benchmarks.lib.alone --model hf_ext --model-args cache=off,max_batch_tokens=15360
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from benchmarks.lib import real_tasks
from benchmarks.lib.scenarios import ROOT


def _timed_steps() -> list[tuple[float, int, int]]:
    """Wraps the loop's step: ``(seconds, decode tokens, prefill tokens)`` of each step."""
    from lm_eval_ext.hf.compute import continuous

    records: list[tuple[float, int, int]] = []
    step = continuous.ContinuousGenerator._step

    def timed(self, on_finished):
        decoded, prefilled, start = self.stats.decode_tokens, self.stats.prefill_tokens, time.perf_counter()
        step(self, on_finished)
        records.append((time.perf_counter() - start, self.stats.decode_tokens - decoded,
                        self.stats.prefill_tokens - prefilled))

    continuous.ContinuousGenerator._step = timed
    return records


def step_split(records: list[tuple[float, int, int]]) -> dict:
    carrying = [r for r in records if r[2]]
    decode_only = [r for r in records if r[1] and not r[2]]
    by_rows = collections.defaultdict(list)
    for seconds, rows, _ in decode_only:
        by_rows[rows].append(seconds)
    return {"steps": len(records), "prompt_steps": len(carrying), "prompt_steps_s": round(sum(r[0] for r in carrying), 1),
            "prompt_tokens": sum(r[2] for r in carrying), "decode_only_steps": len(decode_only),
            "decode_only_s": round(sum(r[0] for r in decode_only), 1),
            "decode_only_by_rows": {rows: {"steps": len(s), "median_ms": round(1000 * sorted(s)[len(s) // 2])}
                                    for rows, s in sorted(by_rows.items())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("hf", "hf_ext"), required=True)
    parser.add_argument("--model-args", default="", help="after pretrained= and dtype=float32")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--model-path", type=Path, default=ROOT / ".models" / "smollm2-135m")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--steps", action="store_true", help="hf_ext: time every step of the loop")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    records = _timed_steps() if args.steps else None
    import lm_eval_ext  # noqa: F401 (registers hf_ext)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tasks_dir:
        include = real_tasks.write_tasks(args.data_dir, Path(tasks_dir))
        model_args = f"pretrained={args.model_path},dtype=float32" + (f",{args.model_args}" if args.model_args else "")
        start = time.perf_counter()
        out = simple_evaluate(model=args.model, model_args=model_args, tasks=[real_tasks.GSM8K], limit=args.limit,
                              task_manager=TaskManager(include_path=str(include)), fewshot_random_seed=0,
                              bootstrap_iters=0)
        wall_s = time.perf_counter() - start
    report = {"model": args.model, "model_args": args.model_args, "documents": args.limit,
              "wall_s": round(wall_s, 1), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
              "metrics": {k: v for k, v in out["results"][real_tasks.GSM8K].items() if isinstance(v, float)}}
    if records is not None:
        report["loop"] = step_split(records)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
