"""Stock lm-eval ``hf`` vs ``hf_ext`` with its defaults, on real tasks: the ``real-tasks`` scenario.

Tasks are lm-eval's own definitions pointed at ``../shared/data`` (:mod:`benchmarks.lib.real_tasks`):
ARC-Easy 0-shot, MMLU 5-shot (a few subjects), LAMBADA (OpenAI), WikiText-2 (rolling), GSM8K 5-shot
(lm-eval's ``max_gen_toks``). Per task, stock ``hf`` runs at every fixed ``batch_size`` of
:data:`STOCK_SIZES` and ``hf_ext`` with only ``pretrained=`` and ``dtype=`` (plus ``cache=off``, so
that a repetition never reads an earlier one's answers), each configuration in its own process
(peak RSS is per process), repetitions interleaved; the row is stock's best median against hf_ext,
with per-sample agreement. ``hf_ext one row per batch`` (``max_batch_tokens=1``: every packed row
is its own forward) is the one-item-per-batch layout the defaults must not be slower than.

    python benchmarks/real_tasks.py --limit 20 --repetitions 1      # standalone, prints the table
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import compare_hf  # noqa: E402
from benchmarks.lib import real_tasks  # noqa: E402
from benchmarks.lib.compare_summary import EXT, runner_rows  # noqa: E402

STOCK_SIZES = (1, 8, 16, 32)
#: stock rolling pads every window of a batch to the longest (8,192 tokens for SmolLM2): 221 s for
#: 6 WikiText-2 documents at batch_size 8, 99 s at 1 (this CPU); 16 and 32 only pad more
ROLLING_SIZES = (1, 8)
#: stock generation at batch_size 16/32 pads every prompt to the longest and decodes to the
#: longest answer (191 s for 8 GSM8K documents at 8, 47.7 s at 1: TOOLCHAIN.md); the short
#: suite keeps 1 and 8
QUICK_GENERATION_SIZES = (1, 8)
ONE_ROW = "hf_ext one row per batch"


def tasks(num_mmlu_subjects: int) -> list[str]:
    mmlu = [real_tasks.mmlu_task(s) for s in real_tasks.MMLU_SUBJECTS[:num_mmlu_subjects]]
    return [real_tasks.ARC, *mmlu, real_tasks.LAMBADA, real_tasks.WIKITEXT, real_tasks.GSM8K]


def configurations(task: str, generation_sizes) -> dict[str, dict]:
    sizes = {real_tasks.GSM8K: generation_sizes, real_tasks.WIKITEXT: ROLLING_SIZES}.get(task, STOCK_SIZES)
    configs = {f"hf batch_size={n}": {"backend": "hf", "batch_size": n} for n in sizes}
    configs[EXT] = {"backend": "hf_ext", "cache": "off"}  # the defaults: no batch flag at all
    if task != real_tasks.GSM8K:
        configs[ONE_ROW] = {"backend": "hf_ext", "cache": "off", "max_batch_tokens": 1}
    return configs


def compare(model: str, data_dir: Path, *, limits: dict[str, int | None], repetitions: int,
            num_mmlu_subjects: int, generation_sizes, timeout_s: float, device: str = "cpu",
            dtype: str = "float32", only: set[str] | None = None) -> dict:
    result = {"model": model, "machine_before": compare_hf._machine(), "limits": limits,
              "repetitions": repetitions, "tasks": {}}
    with tempfile.TemporaryDirectory() as folder:
        include = [str(real_tasks.write_tasks(data_dir, Path(folder)))]
        for task in tasks(num_mmlu_subjects):
            if only and not any(task.startswith(prefix) for prefix in only):
                continue
            limit = limits.get("mmlu" if task.startswith(real_tasks.MMLU_PREFIX) else task)
            entry = compare_hf.run_task(model, task, include_paths=include,
                                        configs=configurations(task, generation_sizes), timeout_s=timeout_s,
                                        limit=limit, repetitions=repetitions, device=device, dtype=dtype)
            result["tasks"][task] = entry
    result["machine_after"] = compare_hf._machine()
    return result


def one_row_notes(result: dict) -> list[str]:
    """hf_ext's defaults against its one-row-per-batch layout, per task (medians)."""
    notes = []
    for task, entry in result["tasks"].items():
        runs = entry.get("runs", {})
        if "wall_s" in runs.get(EXT, {}) and "wall_s" in runs.get(ONE_ROW, {}):
            notes.append(f"{task}: hf_ext defaults {runs[EXT]['wall_s']:.1f} s vs one row per batch "
                         f"{runs[ONE_ROW]['wall_s']:.1f} s ({runs[ONE_ROW]['wall_s'] / runs[EXT]['wall_s']:.2f}x)")
    for task, entry in result["tasks"].items():
        line = computed_rate(entry.get("runs", {}).get(EXT, {}).get("cost_report") or {})
        if line:
            notes.append(f"{task}: hf_ext defaults {line}")
    return notes


def computed_rate(cost_report: dict) -> str:
    """What the engine computed and how fast, from its cost report (compare with
    ``benchmarks/forward_ceiling.py`` at the same rows x tokens)."""
    entries = list(cost_report.values())
    batch_s = sum(e["wall_s"] for e in entries)
    if not entries or batch_s <= 0:
        return ""
    computed, padded = sum(e["tokens_computed"] for e in entries), sum(e["padded_tokens"] for e in entries)
    return (f"computed {computed} tokens ({padded} with padding) in {batch_s:.1f} s of batches: "
            f"{computed / batch_s:.0f} tokens/s ({padded / batch_s:.0f} with padding)")


def bench_scenario(ctx) -> dict:
    """``benchmarks/run.py``'s ``real-tasks`` scenario, sized by the suite's ``real-tasks*`` limits."""
    from benchmarks.lib.scenarios import Skip

    if not real_tasks.available(ctx.data_dir):
        raise Skip("real benchmark data not found (../shared/data: arc_easy, mmlu, lambada_openai, wikitext2, "
                   "gsm8k; BENCH_DATA_DIR overrides)")
    quick = ctx.suite.name == "cpu-quick"
    keys = ("arc", "mmlu", "lambada", "wikitext", "gsm8k")
    names = (real_tasks.ARC, "mmlu", real_tasks.LAMBADA, real_tasks.WIKITEXT, real_tasks.GSM8K)
    limits = {name: ctx.suite.limit(f"real-tasks-{key}") for key, name in zip(keys, names, strict=True)}
    result = compare(str(ctx.model_path), ctx.data_dir, limits=limits, repetitions=ctx.suite.repetitions,
                     num_mmlu_subjects=1 if quick else 3,
                     generation_sizes=QUICK_GENERATION_SIZES if quick else STOCK_SIZES,
                     timeout_s=ctx.suite.worker_timeout_s, device=ctx.suite.device, dtype=ctx.suite.dtype)
    notes = [line for line in compare_hf.format_table(result).splitlines() if line.startswith("machine")]
    notes += one_row_notes(result)
    return {"rows": runner_rows(result), "runs": {"real_tasks": result}, "config": {"limits": limits},
            "notes": notes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / ".models" / "smollm2-135m"))
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--limit", type=int, default=20, help="documents per scoring task")
    parser.add_argument("--long-limit", type=int, default=4, help="documents of WikiText-2 and GSM8K")
    parser.add_argument("--mmlu-subjects", type=int, default=2)
    parser.add_argument("--mmlu-limit", type=int, default=None, help="documents per MMLU subject (default --limit)")
    parser.add_argument("--repetitions", type=int, default=1)
    parser.add_argument("--generation-sizes", default="1,8")
    parser.add_argument("--stock-sizes", default="1,8,16,32", help="stock batch sizes on scoring tasks")
    parser.add_argument("--rolling-sizes", default="1,8", help="stock batch sizes on WikiText-2")
    parser.add_argument("--tasks", default="", help="comma-separated task-name prefixes to run (default: all), "
                        "e.g. arc_easy_local,lambada")
    parser.add_argument("--out", default="real_tasks.json")
    args = parser.parse_args(argv)
    limits = {name: args.limit for name in (real_tasks.ARC, "mmlu", real_tasks.LAMBADA)}
    limits |= {real_tasks.WIKITEXT: args.long_limit, real_tasks.GSM8K: args.long_limit}
    if args.mmlu_limit is not None:
        limits["mmlu"] = args.mmlu_limit
    global STOCK_SIZES, ROLLING_SIZES
    STOCK_SIZES = tuple(int(n) for n in args.stock_sizes.split(","))
    ROLLING_SIZES = tuple(int(n) for n in args.rolling_sizes.split(","))
    result = compare(args.model, args.data_dir, limits=limits, repetitions=args.repetitions,
                     num_mmlu_subjects=args.mmlu_subjects, timeout_s=1800,
                     generation_sizes=tuple(int(n) for n in args.generation_sizes.split(",")),
                     only={t for t in args.tasks.split(",") if t} or None)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    print(compare_hf.format_table(result))
    print("\n".join(one_row_notes(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
