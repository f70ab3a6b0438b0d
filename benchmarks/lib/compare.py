"""EDGE: the one stock-vs-ext comparison of the instrument.

A :class:`Comparison` names *configurations* (worker implementations: stock ones, the candidate,
other ext layouts) and *groups* of tasks (one task, or MMLU's subjects; each with its documents and
the configurations that run on it). :func:`run` runs one warm-up per configuration, then, group by
group, every configuration's measured repetitions interleaved (A B C, C B A, ...), in one worker
process that loaded each model once; or, where an engine must start afresh for every run (stock
vLLM data parallel through Ray), each run in a process of its own with that configuration's
environment. :func:`best_rows` turns the steps into table rows: per group, stock's best
configuration (the lowest median) against the candidate, with per-sample agreement.

hf-suite, gsm8k, data-parallel, compare-hf, real-tasks, vllm and compare-vllm are comparisons; a new
scenario (generation on lm-eval's GSM8K tasks, vLLM multiple choice) is a Comparison of its own over
the task YAMLs of :mod:`benchmarks.lib.real_tasks` (benchmarks/README.md, "Adding a scenario").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.lib.rows import Timing, best_row, eval_time
from benchmarks.lib.scenarios import Context
from benchmarks.lib.stats import interleaved_order

#: the candidate's configuration name where a comparison has one ext side: hf_ext with its defaults
EXT = "hf_ext"


@dataclass(frozen=True)
class Group:
    """Tasks measured together: one row of the comparison."""

    key: str
    """The row's key (a task name, ``mmlu``) and its steps' label prefix; ``""`` for a lone group."""
    tasks: tuple[str, ...]
    limit: int | None = None
    """Documents per task (``None``: every document)."""
    configs: tuple[str, ...] | None = None
    """The configurations that run on this group (``None``: all)."""

    @property
    def prefix(self) -> str:
        return f"{self.key}/" if self.key else ""


@dataclass
class Comparison:
    name: str
    """Its work folder under the run's ``work/``."""
    impls: dict[str, dict]
    """Configuration name -> worker implementation (``model``, ``model_args``, ``batch_size``, ``device``)."""
    groups: list[Group]
    include_path: list[str]
    stock: tuple[str, ...]
    """The baseline configurations; a row's baseline is the fastest of those that ran on its group."""
    candidate: str
    env: dict | None = None
    env_for: dict[str, dict] = field(default_factory=dict)
    """Extra environment per configuration (used where each run has a process of its own)."""
    python: str | None = None
    """Interpreter of the worker (another venv's, for vLLM); default this one."""
    fresh_process_per_run: bool = False
    num_processes: int = 1
    warmup_tasks: tuple[str, ...] | None = None
    """What the warm-up evaluates (default: the first group's tasks)."""
    fresh_model: tuple[str, ...] = ()
    """Configurations built afresh for every run and not warmed up: work their constructor or first
    call does once per model (stock ``batch_size=auto``'s probe) is then part of every run, as in
    a user's run."""

    def configs_of(self, group: Group) -> list[str]:
        return [c for c in self.impls if group.configs is None or c in group.configs]


def steps(comparison: Comparison, repetitions: int, warmup_limit: int) -> list[dict]:
    """One warm-up per configuration, then per group the measured repetitions interleaved.

    The warm-up runs a few documents, at least one per process so that no rank is left without
    work; a group's limit is raised to the process count for the same reason.
    """
    size = comparison.num_processes
    first = comparison.groups[0]
    warmup_tasks = list(comparison.warmup_tasks or first.tasks)
    out = [{"label": f"warmup-{impl}", "impl": impl, "tasks": warmup_tasks, "limit": max(warmup_limit, size),
            "measured": False, "keep_outputs": False} for impl in comparison.impls if impl not in comparison.fresh_model]
    for group in comparison.groups:
        limit = None if group.limit is None else max(group.limit, size)
        for rep, impl in interleaved_order(comparison.configs_of(group), repetitions):
            out.append({"label": f"{group.prefix}{impl}-r{rep}", "impl": impl, "group": group.key,
                        "tasks": list(group.tasks), "limit": limit, "repetition": rep,
                        **({"fresh_model": True} if impl in comparison.fresh_model else {})})
    return out


def run(ctx: Context, comparison: Comparison) -> dict:
    """Run every step; the merged record (``steps``, and per process the run records)."""
    plan_steps = steps(comparison, ctx.suite.repetitions, ctx.suite.warmup_limit)
    if not comparison.fresh_process_per_run:
        plan = {"include_path": comparison.include_path, "impls": comparison.impls, "steps": plan_steps}
        return ctx.run(comparison.name, plan, num_processes=comparison.num_processes, env=comparison.env,
                       python=comparison.python)
    merged: dict = {"steps": [], "process_wall_s": {}}
    for step in plan_steps:
        impl = step["impl"]
        plan = {"include_path": comparison.include_path, "impls": {impl: comparison.impls[impl]},
                "steps": [step | {"fresh_model": True}]}
        env = (comparison.env or {}) | comparison.env_for.get(impl, {})
        one = ctx.run(f"{comparison.name}/{step['label'].replace('/', '-')}", plan,
                      num_processes=comparison.num_processes, env=env, python=comparison.python)
        merged["process_wall_s"][step["label"]] = one["process_wall_s"]
        if one.get("steps"):
            merged["steps"] += one["steps"]
        else:  # the process died before its step finished: keep the reason as the step's error
            merged["steps"].append({k: step[k] for k in ("label", "impl") if k in step}
                                   | {"measured": step.get("measured", True), "error": one.get("error", "no result")})
    return merged


def best_rows(comparison: Comparison, merged: dict, title: Callable[[Group], str], *,
              timing: Timing = eval_time, candidate_label: str = "hf_ext",
              compared: Callable[[Group], bool] = lambda group: True) -> list[dict]:
    """Per group: stock's best configuration against the candidate; per-sample agreement where
    ``compared(group)`` (not for sampled tasks: stock's samples follow its batch, see the notes)."""
    rows = []
    for group in comparison.groups:
        names = comparison.configs_of(group)
        stock = [n for n in comparison.stock if n in names]
        if not stock or comparison.candidate not in names:
            continue
        row = best_row(title(group), merged.get("steps", []), baselines=stock, candidate=comparison.candidate,
                       label_prefix=group.prefix, timing=timing, tasks=list(group.tasks), key=group.key or None,
                       labels=("stock {best}", candidate_label), check_agreement=compared(group))
        row["baseline_label"] = f"stock {row['best_baseline'].removeprefix('hf ')}"  # stock batch_size=8
        rows.append(row)
    return rows


def hf_impls(ctx: Context, configs: dict[str, dict | None]) -> dict[str, dict]:
    """Worker implementations of ``{"backend": "hf"|"hf_ext", "batch_size": N, **model_args}``
    configurations (``None``: a configuration left out, see :func:`left_out`)."""
    impls = {}
    for name, config in configs.items():
        if config is None:
            continue
        extra = {k: v for k, v in config.items() if k not in ("backend", "batch_size")}
        args = ",".join(f"{k}={v}" for k, v in extra.items())
        impls[name] = ctx.hf_impl(config["backend"], args, batch_size=config.get("batch_size", 1))
    return impls


def left_out(configs: dict[str, dict | None]) -> list[str]:
    return [name for name, config in configs.items() if config is None]


def medians_note(row: dict) -> str:
    """``key: stock batch_size=1 12.3 s, batch_size=8 10.1 s (best); hf_ext 4.0 s``."""
    medians = row.get("baseline_medians_s") or {}
    parts = [f"{name} {seconds:.2f} s" + (" (best)" if name == row.get("best_baseline") else "")
             for name, seconds in medians.items()]
    cand = row["candidate"].get("median_s")
    tail = f"; {row['candidate_label']} {cand:.2f} s" if cand is not None else ""
    return f"{row.get('key') or row['row']}: " + ", ".join(parts) + tail
