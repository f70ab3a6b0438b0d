"""Scenario registry and the context every scenario receives.

A scenario is a small function ``fn(ctx) -> dict`` registered with :func:`scenario`. It returns
``{"rows": [...], "runs": {...}, "config": {...}, "notes": [...]}`` or raises :class:`Skip` with
the reason it cannot run here (a missing piece, too few GPUs). The runner records either, so a
scenario that could not run says why. Plugging in another script is one more registered function.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.lib import launch
from benchmarks.lib.stats import interleaved_order
from benchmarks.lib.suites import Suite

ROOT = Path(__file__).resolve().parents[2]


class Skip(Exception):
    """This scenario cannot run on this machine or at this state of the project; says why."""


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    fn: Callable[[Context], dict]


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, title: str):
    def register(fn):
        SCENARIOS[name] = Scenario(name, title, fn)
        return fn

    return register


@dataclass
class Context:
    suite: Suite
    work_dir: Path
    model_path: Path
    machine: dict
    data_dir: Path | None

    @property
    def use_gpu(self) -> bool:
        return self.suite.device.startswith("cuda")

    @property
    def num_cores(self) -> int:
        return self.machine.get("usable_cpu_cores") or 1

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

    def hf_impl(self, model: str, extra_args: str = "") -> dict:
        args = f"pretrained={self.model_path},dtype={self.suite.dtype}"
        if model == "hf_ext":
            if "max_batch_tokens" in self.ext_fields():
                args += ",max_batch_tokens=auto"
            extra_args = self.ext_args(model, extra_args)
        return {"model": model, "model_args": args + (f",{extra_args}" if extra_args else ""),
                "batch_size": self.suite.batch_size, "device": self.suite.device}

    def include_path(self, *extra: Path) -> list[str]:
        return [str(ROOT / "tasks"), *map(str, extra)]

    def run(self, name: str, plan: dict, num_processes: int = 1, env: dict | None = None,
            python: str | None = None) -> dict:
        """Run a plan in fresh worker processes, cores split evenly between them."""
        threads = max(1, self.num_cores // num_processes)
        plan = {"num_threads": threads} | plan
        merged = launch.run_plan(plan, self.work_dir / name, num_processes=num_processes, use_gpu=self.use_gpu,
                                 timeout_s=self.suite.worker_timeout_s, env=env, python=python)
        merged["num_threads_per_process"] = threads
        return merged


def comparison_steps(impls: list[str], tasks: list[str], limit: int | None, suite: Suite, *,
                     num_processes: int = 1, warmup_tasks: list[str] | None = None) -> list[dict]:
    """One warm-up run per implementation, then the measured repetitions interleaved (A B, B A, ...).

    The warm-up runs ``warmup_tasks`` (default: ``tasks``) on a few documents, at least one per
    process so that no rank is left without work.
    """
    warmup_limit = max(suite.warmup_limit, num_processes)
    if limit is not None:
        limit = max(limit, num_processes)
    steps = [{"label": f"warmup-{impl}", "impl": impl, "tasks": warmup_tasks or tasks, "limit": warmup_limit,
              "measured": False, "keep_outputs": False} for impl in impls]
    for rep, impl in interleaved_order(impls, suite.repetitions):
        steps.append({"label": f"{impl}-r{rep}", "impl": impl, "tasks": tasks, "limit": limit, "repetition": rep})
    return steps


def strip_outputs(merged: dict) -> dict:
    """The run record for JSON: per-sample outputs removed (agreement already summarizes them)."""
    out = dict(merged)
    out["steps"] = [{k: v for k, v in s.items() if k != "samples"} for s in merged.get("steps", [])]
    return out


def failed_steps(merged: dict) -> list[str]:
    notes = [merged["error"]] if "error" in merged else []
    notes += [f"step {s['label']}: {s['error']}" for s in merged.get("steps", []) if "error" in s]
    return notes


def module_available(name: str, python: str | None = None) -> bool:
    """Whether ``name`` imports in this interpreter, or in ``python`` (another venv) when given."""
    if python:
        probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name!r}) is None)"
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=120).returncode == 0
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
