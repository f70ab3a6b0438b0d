"""Scenarios of ``vllm_ext``'s multiple choice (docs/vllm.md): stock ``vllm`` against ``vllm_ext`` end to
end on the task shapes of :mod:`benchmarks.lib.vllm_mc_shapes`, with the cost report's token bound
(``vllm-mc``), and where the scoring time goes (``vllm-profile``).

``vllm-mc``: per shape (``--tasks arc0,arc5,mmlu5,mmlu0``), both sides built from
``pretrained=M,dtype=...`` (and ``enforce_eager=True`` on CPU) and nothing else (``vllm_ext``'s
request cache off, so repetitions compute), each run in a fresh process: one row end to end (engine
start included) and one for the scoring phase (the time inside ``loglikelihood``), with per-sample
agreement; the ``bound`` figure adds, from ``vllm_ext``'s cost report, the prompt tokens stock
computes, what ``vllm_ext`` computed, the minimum at its KV block size, the token bound (stock /
minimal) and how much of it the scoring phase reached (its speedup over the bound).
"""

from __future__ import annotations

from statistics import median

from benchmarks.lib import compare
from benchmarks.lib.compare import Comparison, Group
from benchmarks.lib.real_tasks import has_multiple_choice
from benchmarks.lib.rows import load_plus_eval_time, make_row, pick, request_type_time
from benchmarks.lib.scenarios import Context, Skip, result, scenario
from benchmarks.lib.vllm_mc_shapes import SHAPES, write_tasks
from benchmarks.scenarios.vllm import require_vllm, vllm_env, vllm_python

SIDES = {"baseline": ("vllm", ""), "candidate": ("vllm_ext", "")}
SCORING = request_type_time("loglikelihood")
#: the cost report's counters the ``bound`` figure sums over a shape's tasks
BOUND_COUNTERS = ("stock_tokens", "tokens_computed", "minimal_tokens", "probe_requests", "fallback_requests")


def impl(ctx: Context, model: str) -> dict:
    """Stock ``vllm`` or ``vllm_ext`` with the model, its dtype, eager mode on CPU, and nothing else."""
    args = f"pretrained={ctx.model_path},dtype={ctx.suite.dtype}" + ("" if ctx.use_gpu else ",enforce_eager=True")
    extra = ctx.ext_args(model) if model == "vllm_ext" else ""
    return {"model": model, "model_args": args + (f",{extra}" if extra else ""), "batch_size": "auto",
            "device": ctx.suite.device}


def shapes_of(ctx: Context, default: str) -> list[str]:
    names = [n for n in str(ctx.option("tasks", default)).split(",") if n]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise Skip(f"--tasks {','.join(unknown)}: choose from {', '.join(SHAPES)}")
    return names


def require_data(ctx: Context) -> None:
    if ctx.data_dir is None or not has_multiple_choice(ctx.data_dir):
        raise Skip("needs ../shared/data (arc_easy/, mmlu/) or BENCH_DATA_DIR")


def bound_line(group: Group, steps: list[dict]) -> str:
    """One line of the ``bound`` figure: times of both sides and the cost report's tokens."""
    ext_steps = pick(steps, "vllm_ext", group.prefix)
    counters = {k: 0 for k in BOUND_COUNTERS}
    for task, values in (ext_steps[0].get("extension", {}).get("by_task", {}) if ext_steps else {}).items():
        if task in group.tasks:
            for key in BOUND_COUNTERS:
                counters[key] += values.get(key, 0)
    e2e = [_median(steps, side, group, load_plus_eval_time) for side in ("vllm", "vllm_ext")]
    scoring = [_median(steps, side, group, SCORING) for side in ("vllm", "vllm_ext")]
    bound = counters["stock_tokens"] / counters["minimal_tokens"] if counters["minimal_tokens"] else None
    scoring_speedup = scoring[0] / scoring[1] if all(scoring) else None
    of_bound = "-" if bound is None or scoring_speedup is None else f"{100 * scoring_speedup / bound:.0f}%"
    tokens = f"{counters['stock_tokens']:.0f}/{counters['tokens_computed']:.0f}/{counters['minimal_tokens']:.0f}"
    return (f"{group.key:<6} {group.limit!s:>5} {_s(e2e[0]):>8} {_s(e2e[1]):>8} {_x(e2e[0], e2e[1]):>6} "
            f"{_s(scoring[0]):>8} {_s(scoring[1]):>8} {_x(scoring[0], scoring[1]):>6} "
            f"{'-' if bound is None else f'{bound:.2f}x':>6} {of_bound:>6} {tokens:>20} "
            f"{counters['probe_requests']:>6.0f} {counters['fallback_requests']:>9.0f}")


def _median(steps: list[dict], side: str, group: Group, timing) -> float | None:
    times = [t for t in (timing(s) for s in pick(steps, side, group.prefix)) if t is not None]
    return median(times) if times else None


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


def _x(baseline: float | None, candidate: float | None) -> str:
    return "-" if not baseline or not candidate else f"{baseline / candidate:.2f}x"


#: the ``bound`` figure's header: e2e = engine start + evaluation; scoring = inside loglikelihood; tokens =
#: stock / computed / minimal prompt tokens (vllm_ext's cost report)
BOUND_HEADER = (f"{'shape':<6} {'docs':>5} {'stock':>8} {'ext':>8} {'e2e':>6} {'stock':>8} {'ext':>8} {'score':>6} "
                f"{'bound':>6} {'of':>6} {'tokens':>20} {'probes':>6} {'fallbacks':>9}\n"
                f"{'':<6} {'/task':>5} {'e2e s':>8} {'e2e s':>8} {'':>6} {'score s':>8} {'score s':>8} {'':>6} "
                f"{'':>6} {'bound':>6} {'stock/computed/min':>20} {'':>6} {'':>9}")


@scenario("vllm-mc", "stock vllm vs vllm_ext on multiple choice (ARC-Easy 0/5-shot, MMLU 5/0-shot), each run a fresh "
          "process: end to end and the scoring phase, with the token bound", options=("tasks", "limit"))
def vllm_mc(ctx: Context) -> dict:
    require_vllm()
    require_data(ctx)
    include = write_tasks(ctx.data_dir, ctx.work_dir / "vllm-mc-tasks")
    groups = [Group(name, SHAPES[name].tasks, ctx.limit("vllm-mc", name, default=SHAPES[name].default_limit))
              for name in shapes_of(ctx, ",".join(SHAPES))]
    comparison = Comparison("vllm-mc", {side: impl(ctx, side) for side in ("vllm", "vllm_ext")}, groups, [str(include)],
                            stock=("vllm",), candidate="vllm_ext", env=vllm_env(ctx, "vllm-mc"), python=vllm_python(),
                            fresh_process_per_run=True)
    merged = compare.run(ctx, comparison)
    steps, rows = merged.get("steps", []), []
    for group in groups:
        sides = {"baseline": ("vllm", group.prefix), "candidate": ("vllm_ext", group.prefix)}
        title = f"vllm {SHAPES[group.key].title}, {group.limit} docs/task"
        rows.append(make_row(f"{title}: end to end", steps, **sides, labels=("stock vllm", "vllm_ext"),
                             timing=load_plus_eval_time, tasks=list(group.tasks), key=group.key))
        rows.append(make_row(f"{title}: scoring phase", steps, **sides, labels=("stock vllm", "vllm_ext"),
                             timing=SCORING, tasks=list(group.tasks), check_agreement=False,
                             key=f"{group.key}-scoring"))
    figure = "\n".join([BOUND_HEADER, *(bound_line(group, steps) for group in groups),
                        *(f"{g.key}: {SHAPES[g.key].title}" for g in groups)])
    notes = ["time = engine start + evaluation, each run in a fresh process; scoring = the time inside loglikelihood",
             "of bound = scoring speedup / token bound (stock prompt tokens / the minimum at vllm_ext's KV block size)"]
    config = {"tasks": {g.key: list(g.tasks) for g in groups}, "limits": {g.key: g.limit for g in groups},
              "impls": comparison.impls}
    return result(rows, {"vllm-mc": merged}, config, notes, figures={"bound": figure})


@scenario("vllm-profile", "where a multiple-choice evaluation's scoring time goes, stock vllm and vllm_ext: CPU "
          "seconds of forward, prompt logprobs, sampling, vLLM's Python and request handling",
          options=("tasks", "limit"))
def vllm_profile(ctx: Context) -> dict:
    require_vllm()
    require_data(ctx)
    runs, lines = {}, []
    for shape in shapes_of(ctx, "arc5,mmlu0"):
        limit = ctx.limit("vllm-profile", shape, default={"arc5": 20, "mmlu0": 10}.get(shape, 10))
        for variant in ("vllm", "vllm_ext"):
            name = f"vllm-profile-{shape}-{variant}"
            runs[name] = ctx.run_function(
                name, "benchmarks.lib.vllm_profile:profile",
                {"variant": variant, "model": str(ctx.model_path), "shape_name": shape, "limit": limit,
                 "data_dir": str(ctx.data_dir), "task_dir": str(ctx.work_dir / "vllm-profile-tasks"),
                 "dtype": ctx.suite.dtype}, env=vllm_env(ctx, name), python=vllm_python())
            lines += runs[name]["lines"]
    return {"runs": runs, "figures": {"table": "\n".join(lines)},
            "notes": ["CPU seconds of every thread: proportions hold on a shared machine, absolute seconds do not"]}
