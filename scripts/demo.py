"""`make demo`: evaluate a real model with hf_ext on the shipped group; print the plan, the scores,
the cost table, the request cache in one line and where the results are. With ``--output_path``
the results JSON and a PNG chart (tokens/s per task, where the time went) are written there."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def print_plan(model: str) -> None:
    from lm_eval_ext.commands import plan as plan_command

    parser = argparse.ArgumentParser()
    plan_command.add_arguments(parser)
    print("== plan")
    plan_command.main(parser.parse_args(["--model_args", f"pretrained={model}"]))


def scores(results: dict) -> list[tuple[str, str, float]]:
    """``(task, metric, value)`` for every score (stderrs and aliases left out), in task order."""
    rows = []
    for task, values in results["results"].items():
        for name, value in values.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric and "stderr" not in name and not name.startswith("sample_len"):
                rows.append((task, name.split(",")[0], float(value)))
    return rows


def cache_line(cache: dict) -> str:
    totals = cache.get("totals") or {}
    if not cache:
        return "request cache: off"
    rate = totals.get("hit_rate")
    rate_text = f"{100 * rate:.0f}%" if rate is not None else "-"
    return (f"request cache: {totals.get('hits', 0)} hits, {totals.get('misses', 0)} computed ({rate_text} hit rate, "
            f"{totals.get('saved_s', 0.0):.1f} s saved), mode {cache.get('mode')}, {cache.get('cache_dir')}")


def cost_table(cost: dict) -> str:
    from lm_eval_ext.backend.cost_report import CostEntry, CostReport

    report = CostReport()
    for row in cost.values():
        report.entries[(row["task"], row["request_type"])] = CostEntry.from_dict(row)
    return report.format_table()


def time_split(cost: dict, load_s: float) -> dict[str, float]:
    """Seconds by phase: loading the model, then each request type (summed over tasks)."""
    split = {"model load": load_s}
    for row in cost.values():
        split[row["request_type"]] = split.get(row["request_type"], 0.0) + float(row["wall_s"])
    return split


def tokens_per_s(cost: dict) -> dict[str, float]:
    per_task: dict[str, list[float]] = {}
    for row in cost.values():
        tokens, wall_s = per_task.setdefault(row["task"], [0.0, 0.0])
        per_task[row["task"]] = [tokens + float(row["tokens_computed"]), wall_s + float(row["wall_s"])]
    return {task: tokens / wall_s for task, (tokens, wall_s) in per_task.items() if wall_s > 0}


def write_chart(path: Path, cost: dict, load_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates, split = tokens_per_s(cost), time_split(cost, load_s)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.barh(list(rates), list(rates.values()), color="tab:blue")
    left.set_xlabel("tokens computed per second")
    left.set_title("throughput per task")
    right.barh(list(split), list(split.values()), color="tab:orange")
    right.set_xlabel("seconds")
    right.set_title("where the time went")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def report(results: dict, *, model: str, load_s: float, wall_s: float, output_dir: Path | None) -> None:
    config = results["config"]
    plan = config.get("lm_eval_ext_plan") or {}
    cost = config.get("cost_report") or {}
    print("\n== scores")
    for task, metric, value in scores(results):
        print(f"{task:<22} {metric:<18} {value:.4f}")
    if plan:
        print(f"\n== plan used: {plan.get('strategy')}, {plan.get('num_replicas')} replica(s) on {plan.get('device')}")
    if cost:
        print("\n== cost report")
        print(cost_table(cost))
    print()
    print(cache_line(config.get("request_cache") or {}))
    print(f"model {model}: loaded in {load_s:.1f} s; {wall_s:.1f} s in all")
    if output_dir is None:
        print("results: not written (pass --output_path DIR for the results JSON and a chart)")
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    results_path = output_dir / "results.json"
    results_path.write_text(json.dumps({k: v for k, v in results.items() if k != "samples"}, indent=1, default=str))
    chart_path = output_dir / "chart.png"
    write_chart(chart_path, cost, load_s)
    print(f"results: {results_path}")
    print(f"chart: {chart_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(ROOT / ".models" / "smollm2-135m"))
    parser.add_argument("--tasks", default="ext_suite")
    parser.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    parser.add_argument("--model_args", default="max_batch_tokens=auto",
                        help="hf_ext model_args besides pretrained (k=v,...)")
    parser.add_argument("--output_path", type=Path, default=None, help="folder for results.json and chart.png")
    args = parser.parse_args(argv)

    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import setup_logging

    from lm_eval_ext.registry import register_models
    from lm_eval_ext.tasks_dir import shipped_tasks_dir

    setup_logging("WARNING")
    register_models()
    print_plan(args.model)
    model_args = f"pretrained={args.model}" + (f",{args.model_args}" if args.model_args else "")
    started_s = time.perf_counter()
    lm = get_model("hf_ext").create_from_arg_string(model_args)
    load_s = time.perf_counter() - started_s
    results = lm_eval.simple_evaluate(
        model=lm, tasks=args.tasks.split(","), limit=args.limit,
        task_manager=TaskManager(include_path=[str(shipped_tasks_dir())], include_defaults=False),
    )
    report(results, model=args.model, load_s=load_s, wall_s=time.perf_counter() - started_s,
           output_dir=args.output_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
