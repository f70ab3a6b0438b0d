"""`make demo`: evaluate a real model with hf_ext on the shipped group; print plan, scores, time."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def print_plan(model: str) -> None:
    try:
        from lm_eval_ext.commands import plan as plan_command
    except ImportError:
        print("plan: (planner not available in this version)")
        return
    parser = argparse.ArgumentParser()
    plan_command.add_arguments(parser)
    plan_command.main(parser.parse_args(["--model_args", f"pretrained={model}"]))


def print_summary(config: dict) -> None:
    """The plan used, the request cache's hits and the scoring engine's token counts."""
    plan = config.get("lm_eval_ext_plan") or {}
    if plan:
        print(f"plan used: {plan.get('strategy')} ({plan.get('num_replicas')} replica(s))")
    cache = config.get("request_cache") or {}
    if cache:
        print(f"request cache: {json.dumps(cache, default=str)[:600]}")
    cost = config.get("cost_report") or {}
    if cost:
        print(f"cost report: {json.dumps(cost, default=str)[:1500]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(ROOT / ".models" / "smollm2-135m"))
    parser.add_argument("--tasks", default="ext_suite")
    parser.add_argument("--model_args", default="max_batch_tokens=auto",
                        help="hf_ext model_args besides pretrained (k=v,...)")
    args = parser.parse_args()

    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table, setup_logging

    from lm_eval_ext.tasks_dir import shipped_tasks_dir

    setup_logging("WARNING")
    print_plan(args.model)
    model_args = f"pretrained={args.model}" + (f",{args.model_args}" if args.model_args else "")
    started_s = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model="hf_ext",
        model_args=model_args,
        tasks=args.tasks.split(","),
        task_manager=TaskManager(include_path=[str(shipped_tasks_dir())], include_defaults=False),
        log_samples=True,
    )
    wall_s = time.perf_counter() - started_s
    num_requests = sum(
        len(sample["resps"]) for samples in results["samples"].values() for sample in samples
    )
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    print_summary(results["config"])
    print(f"model: {args.model}")
    print(f"wall time: {wall_s:.1f} s for {num_requests} requests "
          f"({num_requests / wall_s:.1f} requests/s, model load included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
