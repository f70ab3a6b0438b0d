"""The forward ceiling (:mod:`benchmarks.lib.ceiling`): the decoder alone at given shapes, and
``hf_ext``'s own batches on a real task replayed against it. Figures, not stock-vs-ext rows."""

from __future__ import annotations

from benchmarks.lib import real_tasks
from benchmarks.lib.scenarios import Context, Skip, scenario

#: documents per task where neither a suite nor --limit says (WikiText-2's documents are long)
DEFAULT_LIMITS = {"arc": 200, "mmlu": 100, "lambada": 200, "wikitext": 2}
SHAPES = ("8x90", "16x90", "32x90", "64x90", "96x90", "4x512", "1x1024", "8x128")


def _rates(ctx: Context, name: str, shapes: list[str], seconds: float) -> dict:
    return ctx.run_function(name, "benchmarks.lib.ceiling:forward_rates",
                            {"model": str(ctx.model_path), "shapes": shapes, "seconds": seconds,
                             "threads": ctx.num_cores})


def decoder_rate(ctx: Context, name: str, shape: str, seconds: float = 3.0) -> float | None:
    """The decoder's tokens/s at one unprefixed shape (``8x512``), for other scenarios' notes."""
    return _rates(ctx, name, [shape], seconds)["shapes"][0].get("tokens_per_s")


@scenario("forward-ceiling", "the decoder alone (no LM head) at fixed shapes: the ceiling any scorer meets",
          options=("shapes", "seconds"))
def forward_ceiling(ctx: Context) -> dict:
    shapes = [s for s in str(ctx.option("shapes", ",".join(SHAPES))).split(",") if s]
    seconds = float(ctx.option("seconds", 3.0))
    from benchmarks.lib.ceiling import rates_table

    rates = _rates(ctx, "forward-ceiling", shapes, seconds)
    return {"runs": {"forward-ceiling": rates}, "config": {"shapes": shapes, "seconds": seconds},
            "figures": {"table": rates_table(rates)}}


def replay_tasks(task_option: str, subjects: tuple[str, ...]) -> dict[str, list[str]]:
    """``arc_easy_local,mmlu`` -> ``{"arc_easy_local": [...], "mmlu": [one task per subject]}`` (PURE)."""
    return {task: [real_tasks.mmlu_task(s) for s in subjects] if task == "mmlu" else [task]
            for task in task_option.split(",") if task}


@scenario("engine-ceiling", "hf_ext's scoring batches on real tasks replayed against the decoder's ceiling "
          "(decoder alone, and decoder + LM head at the scored positions), interleaved",
          options=("tasks", "limit", "mmlu_subjects", "rounds"))
def engine_ceiling(ctx: Context) -> dict:
    if ctx.use_gpu:
        raise Skip("the replay times CPU batches (the engine's GPU batches need CUDA events)")
    if not real_tasks.available(ctx.data_dir):
        raise Skip(real_tasks.MISSING)
    subjects = real_tasks.MMLU_SUBJECTS[: int(ctx.option("mmlu_subjects", 2))]
    tasks = replay_tasks(str(ctx.option("tasks", f"{real_tasks.ARC},mmlu,{real_tasks.LAMBADA}")), subjects)
    limits = {label: ctx.limit("engine-ceiling", real_tasks.short_name(label),
                               default=DEFAULT_LIMITS.get(real_tasks.short_name(label), 200)) for label in tasks}
    rounds = int(ctx.option("rounds", 3))
    task_dir = real_tasks.write_tasks(ctx.data_dir, ctx.work_dir / "engine-ceiling-tasks", subjects)
    replay = ctx.run_function("engine-ceiling", "benchmarks.lib.ceiling:engine_replay",
                              {"model": str(ctx.model_path), "task_dir": str(task_dir), "tasks": tasks,
                               "limits": limits, "rounds": rounds, "threads": ctx.num_cores})
    table = "\n".join([replay["header"], *replay["lines"].values()])
    sizes = ", ".join(f"{label} {limit or 'all'}" for label, limit in limits.items())
    notes = [f"documents per task (per MMLU subject): {sizes}; {rounds} rounds; t/s of the fastest round of each "
             "side, shares are medians of the per-round ratios"]
    return {"runs": {"engine-ceiling": replay}, "notes": notes, "figures": {"table": table},
            "config": {"tasks": tasks, "limits": limits, "rounds": rounds}}
