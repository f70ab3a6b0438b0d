"""Stock lm-eval ``hf`` vs ``hf_ext`` with its defaults, on real tasks: the ``real-tasks`` scenario.

Tasks are lm-eval's own definitions pointed at ``../shared/data`` (:mod:`benchmarks.lib.real_tasks`):
ARC-Easy 0-shot, MMLU 5-shot (a few subjects), LAMBADA (OpenAI), WikiText-2 (rolling), GSM8K 5-shot
(lm-eval's ``max_gen_toks``). Per task, stock ``hf`` runs at every fixed ``batch_size`` of its
sizes and ``hf_ext`` with only ``pretrained=`` and ``dtype=`` (plus ``cache=off``, so that a
repetition never reads an earlier one's answers); repetitions interleaved, one worker; the row is
stock's best median against hf_ext, with per-sample agreement. ``hf_ext one row per batch``
(``max_batch_tokens=1``: every packed row is its own forward) is the one-item-per-batch layout the
defaults must not be slower than (notes).
"""

from __future__ import annotations

from benchmarks.lib import compare, real_tasks
from benchmarks.lib.compare import EXT, Comparison, Group
from benchmarks.lib.scenarios import Context, Skip, result, scenario

STOCK_SIZES = (1, 8, 16, 32)
#: stock rolling pads every window of a batch to the longest (8,192 tokens for SmolLM2): 221 s for
#: 6 WikiText-2 documents at batch_size 8, 99 s at 1 (this CPU); 16 and 32 only pad more
ROLLING_SIZES = (1, 8)
#: stock generation at batch_size 16/32 pads every prompt to the longest and decodes to the
#: longest answer (191 s for 8 GSM8K documents at 8, 47.7 s at 1: TOOLCHAIN.md)
GENERATION_SIZES = (1, 8)
ONE_ROW = "hf_ext one row per batch"
#: documents per task where a suite does not size it
DEFAULT_LIMITS = {"arc": 20, "mmlu": 20, "lambada": 20, "wikitext": 4, "gsm8k": 4}


def task_names(num_mmlu_subjects: int) -> list[str]:
    mmlu = [real_tasks.mmlu_task(s) for s in real_tasks.MMLU_SUBJECTS[:num_mmlu_subjects]]
    return [real_tasks.ARC, *mmlu, real_tasks.LAMBADA, real_tasks.WIKITEXT, real_tasks.GSM8K]


def configurations(task: str, generation_sizes, stock_sizes=STOCK_SIZES, rolling_sizes=ROLLING_SIZES,
                   one_row: bool = True) -> dict[str, dict]:
    """Configuration name -> (backend and model_args extras) for one task (PURE)."""
    sizes = {real_tasks.GSM8K: generation_sizes, real_tasks.WIKITEXT: rolling_sizes}.get(task, stock_sizes)
    configs = {f"hf batch_size={n}": {"backend": "hf", "batch_size": n} for n in sizes}
    configs[EXT] = {"backend": "hf_ext", "cache": "off"}  # the defaults: no batch flag at all
    if one_row and task != real_tasks.GSM8K:
        configs[ONE_ROW] = {"backend": "hf_ext", "cache": "off", "max_batch_tokens": 1}
    return configs


def one_row_notes(row: dict, steps: list[dict]) -> list[str]:
    """hf_ext's defaults against its one-row-per-batch layout (medians), and what the engine computed
    and how fast (its cost report), for a task."""
    from benchmarks.lib.rows import pick
    from benchmarks.lib.stats import summarize

    key = row["key"]
    medians = {name: summarize([s["eval_s"] for s in pick(steps, name, f"{key}/")]) for name in (EXT, ONE_ROW)}
    notes = []
    if medians[EXT] and medians[ONE_ROW]:
        ext, one = medians[EXT].median, medians[ONE_ROW].median
        notes.append(f"{key}: hf_ext defaults {ext:.1f} s vs one row per batch {one:.1f} s ({one / ext:.2f}x)")
    ext_steps = pick(steps, EXT, f"{key}/")
    line = computed_rate(ext_steps[0].get("extension", {}).get("by_task", {}).get(key, {})) if ext_steps else ""
    if line:
        notes.append(f"{key}: hf_ext defaults {line}")
    return notes


def computed_rate(counters: dict) -> str:
    """What the engine computed and how fast, from its cost counters (compare with the
    ``forward-ceiling`` scenario at the same rows x tokens)."""
    batch_s, computed = counters.get("wall_s", 0), counters.get("tokens_computed") or counters.get("computed_tokens")
    if not computed or batch_s <= 0:
        return ""
    padded = counters.get("padded_tokens", computed)
    return (f"computed {computed:.0f} tokens ({padded:.0f} with padding) in {batch_s:.1f} s of batches: "
            f"{computed / batch_s:.0f} tokens/s ({padded / batch_s:.0f} with padding)")


@scenario("real-tasks", "real tasks (ARC-Easy, MMLU 5-shot, LAMBADA, WikiText-2, GSM8K): stock hf's best fixed "
          "batch_size vs hf_ext defaults",
          options=("tasks", "limit", "mmlu_subjects", "stock_sizes", "generation_sizes", "rolling_sizes"))
def real_tasks_scenario(ctx: Context) -> dict:
    if not real_tasks.available(ctx.data_dir):
        raise Skip(real_tasks.MISSING)
    subjects = real_tasks.MMLU_SUBJECTS[: int(ctx.option("mmlu_subjects", 3))]
    only = [t for t in str(ctx.option("tasks", "")).split(",") if t]
    names = [t for t in task_names(len(subjects)) if not only or any(t.startswith(prefix) for prefix in only)]
    limits = {task: ctx.limit("real-tasks", key, default=DEFAULT_LIMITS[key])
              for task, key in ((t, real_tasks.short_name(t)) for t in names)}
    names = [t for t in names if limits[t] != 0]  # a suite leaves a task out with a limit of 0
    sizes = {"stock_sizes": ctx.sizes("stock_sizes", STOCK_SIZES),
             "generation_sizes": ctx.sizes("generation_sizes", GENERATION_SIZES),
             "rolling_sizes": ctx.sizes("rolling_sizes", ROLLING_SIZES),
             "one_row": bool(ctx.option("one_row", True))}
    # a suite may size MMLU's stock side apart ("real-tasks.mmlu_sizes"): its best is batch_size 1
    mmlu_sizes = ctx.sizes("mmlu_sizes", sizes["stock_sizes"])
    per_task = {task: configurations(task, **(sizes | {"stock_sizes": mmlu_sizes} if real_tasks.short_name(task) == "mmlu" else sizes))
                for task in names}
    all_configs = {name: config for configs in per_task.values() for name, config in configs.items()}
    include = [str(real_tasks.write_tasks(ctx.data_dir, ctx.work_dir / "real-tasks-yaml", subjects))]
    comparison = Comparison("real-tasks", compare.hf_impls(ctx, all_configs),
                            [Group(task, (task,), limits[task], tuple(per_task[task])) for task in names], include,
                            stock=tuple(n for n in all_configs if n.startswith("hf ")), candidate=EXT)
    merged = compare.run(ctx, comparison)
    rows = compare.best_rows(comparison, merged, lambda g: f"real {g.key} ({g.limit or 'all'} docs): stock's best "
                             "vs hf_ext defaults")
    notes = [compare.medians_note(row) for row in rows]
    for row in rows:
        notes += one_row_notes(row, merged.get("steps", []))
    config = {"limits": limits, "subjects": list(subjects), "mmlu_sizes": list(mmlu_sizes),
              **{k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()}}
    return result(rows, {"real-tasks": merged}, config, notes)
