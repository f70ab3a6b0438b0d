"""Scenario registry and the context every scenario receives.

A scenario is a small function ``fn(ctx) -> dict`` registered with :func:`scenario` (the modules
under ``benchmarks/scenarios/``). It returns ``{"rows": [...], "runs": {...}, "config": {...},
"notes": [...], "figures": {...}}`` (every key optional) or raises :class:`Skip` with the reason it
cannot run here (a missing piece, too few GPUs). ``rows`` are baseline-vs-candidate comparisons
(:mod:`benchmarks.lib.rows`); ``figures`` are named markdown blocks (a table of shapes, a replay)
that ``run.py --docs`` can put into the documentation. The runner records either outcome, so a
scenario that could not run says why.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.lib import launch
from benchmarks.lib.suites import Suite

ROOT = Path(__file__).resolve().parents[2]


class Skip(Exception):
    """This scenario cannot run on this machine or at this state of the project; says why."""


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    fn: Callable[[Context], dict]
    options: tuple[str, ...] = ()
    """The ``run.py`` options this scenario reads (``--tasks``, ``--limit``, ...)."""


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, title: str, options: tuple[str, ...] = ()):
    """Register ``fn`` as scenario ``name``; ``options`` names the run.py options it reads."""

    def register(fn):
        SCENARIOS[name] = Scenario(name, title, fn, options)
        return fn

    return register


@dataclass
class Context:
    suite: Suite
    work_dir: Path
    model_path: Path
    machine: dict
    data_dir: Path | None
    options: dict = field(default_factory=dict)
    """run.py's scenario options that were given (``tasks``, ``limit``, ``shapes``, ...)."""
    scenario: str = ""
    """The scenario being run (set by the runner): the suite's ``"SCENARIO.option"`` defaults apply."""

    @property
    def use_gpu(self) -> bool:
        return self.suite.device.startswith("cuda")

    @property
    def num_cores(self) -> int:
        return self.machine.get("usable_cpu_cores") or 1

    def option(self, name: str, default=None):
        """A run.py option if given, else the suite's default for this scenario, else ``default``."""
        for value in (self.options.get(name), self.suite.options.get(f"{self.scenario}.{name}")):
            if value is not None:
                return value
        return default

    def sizes(self, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
        """A comma-separated integer option (``--stock-sizes 8,16``), else ``default``."""
        value = self.option(name)
        return tuple(int(n) for n in str(value).split(",") if n) if value else tuple(default)

    def limit(self, key: str, part: str = "", default: int | None = None) -> int | None:
        """Documents for ``key`` (a scenario, or ``scenario-part`` in the suite's table): ``--limit
        part=N`` for that part, else a plain ``--limit N``, else the suite's size, else ``default``
        (``None``: every document)."""
        given = self.options.get("limit") or {}
        if part and part in given:
            return given[part]
        if "" in given:
            return given[""]
        return self.suite.limits.get(f"{key}-{part}" if part else key, default)

    def ext_fields(self, model: str = "hf_ext") -> set[str]:
        """``model_args`` names ``model`` accepts in this checkout (cache, budget knobs appear as
        they land); empty when its config class is not there."""
        module_name, class_name = {"hf_ext": ("lm_eval_ext.hf.config", "HfExtConfig"),
                                   "vllm_ext": ("lm_eval_ext.vllm.config", "VllmExtConfig")}.get(model, ("", ""))
        try:
            cls = getattr(importlib.import_module(module_name), class_name, None) if module_name else None
        except ImportError:
            cls = None
        return {f.name for f in dataclasses.fields(cls)} if cls is not None else set()

    def ext_args(self, model: str, extra_args: str = "") -> str:
        """Extra ``model_args`` for an ext model: its request cache off unless the scenario sets it
        (a cache that is on by default would turn repetitions 2..n into cache reads)."""
        args = [a for a in extra_args.split(",") if a]
        if "cache" in self.ext_fields(model) and not any(a.startswith("cache=") for a in args):
            args.append("cache=off")
        return ",".join(args)

    def hf_impl(self, model: str, extra_args: str = "", batch_size: int | str | None = None) -> dict:
        """A worker implementation of ``hf`` or ``hf_ext`` on the suite's model, dtype and device."""
        args = f"pretrained={self.model_path},dtype={self.suite.dtype}"
        if model == "hf_ext":
            extra_args = self.ext_args(model, extra_args)
        return {"model": model, "model_args": args + (f",{extra_args}" if extra_args else ""),
                "batch_size": self.suite.batch_size if batch_size is None else batch_size,
                "device": self.suite.device}

    def include_path(self, *extra: Path) -> list[str]:
        return [str(ROOT / "tasks"), *map(str, extra)]

    def run(self, name: str, plan: dict, num_processes: int = 1, env: dict | None = None,
            python: str | None = None) -> dict:
        """Run a worker plan in fresh processes, cores split evenly between them."""
        threads = max(1, self.num_cores // num_processes)
        plan = {"num_threads": threads} | plan
        merged = launch.run_plan(plan, self.work_dir / name, num_processes=num_processes, use_gpu=self.use_gpu,
                                 timeout_s=self.suite.worker_timeout_s, env=env, python=python)
        merged["num_threads_per_process"] = threads
        return merged

    def run_function(self, name: str, target: str, kwargs: dict, *, env: dict | None = None,
                     python: str | None = None):
        """Call ``target`` (``module:function``) in a fresh process; its JSON result."""
        return launch.run_function(target, kwargs, self.work_dir / name, python=python, env=env,
                                   timeout_s=self.suite.worker_timeout_s, use_gpu=self.use_gpu)


def strip_outputs(merged: dict) -> dict:
    """The run record for JSON: per-sample outputs removed (agreement already summarizes them)."""
    out = dict(merged)
    out["steps"] = [{k: v for k, v in s.items() if k != "samples"} for s in merged.get("steps", [])]
    return out


def failed_steps(merged: dict) -> list[str]:
    notes = [merged["error"]] if "error" in merged else []
    notes += [f"step {s['label']}: {s['error']}" for s in merged.get("steps", []) if "error" in s]
    return notes


def result(rows: list[dict], runs: dict, config: dict, notes: list[str] | None = None, **more) -> dict:
    """A scenario's outcome: its rows, its runs (per-sample outputs stripped), the failed steps'
    errors added to its notes."""
    notes = list(notes or [])
    for name, merged in runs.items():
        notes += [f"{name}: {n}" for n in failed_steps(merged)]
    return {"rows": rows, "runs": {k: strip_outputs(v) for k, v in runs.items()}, "config": config,
            "notes": notes, **more}


def module_available(name: str, python: str | None = None) -> bool:
    """Whether ``name`` imports in this interpreter, or in ``python`` (another venv) when given."""
    return launch.module_available(name, python)
