"""The one cold-vs-warm request-cache measurement (a worker plan; see :mod:`benchmarks.lib.worker`).

Per repetition and side: a cold run into a fresh, empty cache folder, then a warm run over it, each
with a freshly built model (a fully cached run may skip loading the weights, so the time is model
load plus evaluation). The sides' order alternates per repetition. A side uses hf_ext's own request
cache (``cache=readwrite,cache_dir=...``: ``native``) or lm-eval's ``--use_cache`` (any model). A
native side's model is built by name inside ``simple_evaluate``, as lm-eval's CLI builds it, so a fully
cached run can take the request cache's fast path (its front answers without the backend; handed a
model object, lm-eval asks it for ``config``, which makes the front load its backend). With
``floor``, lm-eval's ``dummy`` model runs the same tasks once per repetition: lm-eval's own per-run
cost (tasks, contexts, metrics), which no cache removes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.lib.rows import load_plus_eval_time, make_row

FLOOR_IMPL = {"model": "dummy", "model_args": "", "batch_size": 1, "device": "cpu"}


@dataclass(frozen=True)
class Side:
    name: str
    """``stock``, ``ext``: the step sides are ``NAME-cold`` and ``NAME-warm``."""
    impl: dict
    """The worker implementation, its cache arguments left out."""
    native: bool
    """hf_ext's own request cache (a ``cache_dir`` per repetition) instead of lm-eval's ``--use_cache``."""


def _with_args(impl: dict, args: str) -> dict:
    """``impl`` with ``args`` added, replacing any cache arguments it had."""
    kept = [a for a in impl["model_args"].split(",") if a and not (args and a.startswith(("cache=", "cache_dir=")))]
    return impl | {"model_args": ",".join(kept + [a for a in args.split(",") if a])}


def plan(sides: list[Side], tasks: list[str], limit: int | None, *, repetitions: int, warmup_limit: int,
         cache_root: Path, floor: bool = False) -> dict:
    """The worker plan: a warm-up per side with its cache off, then the cold/warm pairs."""
    impls = {f"{s.name}-warmup": _with_args(s.impl, "cache=off" if s.native else "") for s in sides}
    steps = [{"label": f"warmup-{s.name}", "impl": f"{s.name}-warmup", "tasks": tasks, "limit": warmup_limit,
              "measured": False, "keep_outputs": False} for s in sides]
    if floor:
        impls["floor"] = FLOOR_IMPL
    for rep in range(repetitions):
        for side in sides if rep % 2 == 0 else sides[::-1]:
            folder = cache_root / f"{side.name}-r{rep}"
            impl = f"{side.name}-r{rep}"
            impls[impl] = _with_args(side.impl, f"cache=readwrite,cache_dir={folder}" if side.native else "")
            use_cache = None if side.native else str(folder / "lm_cache")
            for phase in ("cold", "warm"):
                steps.append({"label": f"{side.name}-{phase}-r{rep}", "impl": impl, "side": f"{side.name}-{phase}",
                              "tasks": tasks, "limit": limit, "use_cache": use_cache, "fresh_model": True,
                              "build_in_evaluate": side.native, "repetition": rep})
        if floor:
            steps.append({"label": f"floor-r{rep}", "impl": "floor", "side": "floor", "tasks": tasks, "limit": limit,
                          "fresh_model": True, "repetition": rep, "keep_outputs": False})
    return {"impls": impls, "steps": steps}


def warm_vs_cold(title: str, steps: list[dict], side: str, labels: tuple[str, str], tasks: list[str] | None,
                 key: str) -> dict:
    """The row of one side: its warm runs against its cold runs (model load + evaluation)."""
    return make_row(title, steps, baseline=(f"{side}-cold", ""), candidate=(f"{side}-warm", ""), labels=labels,
                    timing=load_plus_eval_time, tasks=tasks, key=key)


def floor_note(steps: list[dict], cold_median_s: float | None) -> str:
    """lm-eval's own per-run cost: the dummy model's median time, and its share of a cold run."""
    times = sorted(t for t in (load_plus_eval_time(s) for s in steps if s.get("side") == "floor" and "error" not in s)
                   if t is not None)
    if not times or not cold_median_s:
        return ""
    floor_s = times[len(times) // 2]
    return (f"lm-eval's own floor (model=dummy, same tasks, nothing computed): median {floor_s:.2f} s = "
            f"{floor_s / cold_median_s:.1%} of cold")


def fast_path_note(steps: list[dict], side: str) -> str:
    """Whether every warm run of ``side`` skipped the backend (the request cache's fast path)."""
    warm = [s for s in steps if s.get("side") == f"{side}-warm" and "error" not in s]
    flags = [s.get("extension", {}).get("fast_path") for s in warm]
    if not warm or any(f is None for f in flags):
        return ""
    return f"backend skipped (fast path) on every warm run: {all(flags)}"
