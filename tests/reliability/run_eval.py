"""A real evaluation process for the reliability tests: lm-eval's Python API on hf_ext.

Uses ``TaskManager(include_defaults=False)`` so a process start does not pay for indexing
lm-eval's ~14,700 built-in tasks. Writes per-sample responses and the request-cache report as
JSON to ``--out`` (only on rank 0, after a complete run).
"""

import argparse
import json
import sys
from pathlib import Path


def evaluate(model_args: str, tasks_dir: str, out: str, *, tasks: str = "ext_suite",
             limit: int | None = None, batch_size: str = "1") -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model="hf_ext",
        model_args=model_args,
        tasks=tasks.split(","),
        task_manager=TaskManager(include_path=tasks_dir, include_defaults=False),
        limit=limit,
        batch_size=batch_size,
        log_samples=True,
    )
    if results is None:  # ranks other than 0
        return
    samples = {
        f"{task}/{sample['doc_id']}": sample["resps"]
        for task, rows in results["samples"].items()
        for sample in rows
    }
    report = {"samples": samples, "request_cache": results["config"].get("request_cache"),
              "results": results["results"]}
    Path(out).write_text(json.dumps(report, sort_keys=True))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-args", required=True)
    parser.add_argument("--tasks", default="ext_suite")
    parser.add_argument("--tasks-dir", required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", default="1")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    evaluate(args.model_args, args.tasks_dir, args.out, tasks=args.tasks, limit=args.limit,
             batch_size=args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
