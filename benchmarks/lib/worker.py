"""EDGE: one evaluation process. Loads each implementation once, then runs the steps of a plan in
the given (interleaved) order and writes ``rank<N>.json`` with timings, memory and per-sample
outputs. Started by :func:`benchmarks.lib.launch.run_plan` (child target ``benchmarks.lib.worker:run``),
plainly or under ``accelerate launch``.

A plan: ``{"impls": {name: {"model", "model_args", "batch_size", "device"}}, "include_path": [...],
"num_threads": N, "out_dir": DIR, "steps": [{"label", "impl", "tasks", "limit", "measured",
"repetition", "side", "use_cache", "fresh_model", "build_in_evaluate", "keep_outputs"}, ...]}``.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
import logging
import os
import time
import traceback
from pathlib import Path

from benchmarks.lib.agreement import compact_samples
from benchmarks.lib.probes import (
    MemoryProbe, RequestTimers, cost_counters, current_cost_report, engine_start_counter, extension_report, workload,
)


def configure(plan: dict) -> int:
    """Threads per process (cores split over ranks) and quiet logs; returns this process's rank."""
    import torch

    rank = int(os.environ.get("RANK", "0"))
    threads = plan.get("num_threads")
    if threads:
        torch.set_num_threads(int(threads))
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("lm-eval", "lm_eval", "lm_eval_ext"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return rank


def load_model(impl: dict):
    """Build the lm-eval model for ``impl``; returns ``(lm, load_s)``."""
    import lm_eval_ext.registry
    from lm_eval.api.registry import get_model

    lm_eval_ext.registry.register_models()
    start = time.perf_counter()
    lm = get_model(impl["model"]).create_from_arg_string(
        impl["model_args"], {"batch_size": impl.get("batch_size", 1), "device": impl.get("device")}
    )
    return lm, time.perf_counter() - start


def prime_imports(plan: dict) -> None:
    """Import every adapter and model class before any load is timed, so the first implementation
    loaded does not pay the lazy imports for both."""
    import lm_eval_ext.registry
    from lm_eval.api.registry import get_model

    lm_eval_ext.registry.register_models()
    for impl in plan["impls"].values():
        try:
            get_model(impl["model"])
            _prime_model_class(impl["model_args"])
        except Exception:  # the timed load reports the real error
            pass


def _prime_model_class(model_args: str) -> None:
    from transformers import AutoConfig, AutoTokenizer  # noqa: F401
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    args = dict(kv.split("=", 1) for kv in model_args.split(",") if "=" in kv)
    if "pretrained" in args and Path(args["pretrained"], "config.json").exists():
        MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(args["pretrained"]))]


def task_manager(plan: dict):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=plan["include_path"], include_defaults=False)


def output_types(results: dict) -> dict[str, str]:
    return {task: cfg.get("output_type", "") for task, cfg in (results.get("configs") or {}).items()}


_TOKENIZERS: dict[str, object] = {}


def count_tokens_with(impl: dict):
    """Token counter of a workload: the tokenizer of the implementation's ``pretrained`` folder (the
    same for stock and ext, and never the model itself: touching a request-cache front would load
    its backend), else ~4 characters a token."""
    args = dict(kv.split("=", 1) for kv in impl.get("model_args", "").split(",") if "=" in kv)
    folder = args.get("pretrained")
    if not folder or not Path(folder, "tokenizer_config.json").exists():
        return lambda text: max(1, len(text) // 4)
    if folder not in _TOKENIZERS:
        from transformers import AutoTokenizer

        _TOKENIZERS[folder] = AutoTokenizer.from_pretrained(folder)
    tokenizer = _TOKENIZERS[folder]
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False)) if text else 0


def evaluate_step(step: dict, lm, manager, impl: dict | None = None, before: dict | None = None) -> tuple[dict, dict | None]:
    """Run one measured (or warm-up) evaluation; returns ``(record, results)``. ``before``: the
    model's cost counters after its previous run (its report accumulates over the model's life).

    ``lm=None``: lm-eval builds the model from ``impl`` by name inside ``simple_evaluate``, as its
    CLI does (the time then includes the build; no request-type timers)."""
    import lm_eval

    probe = MemoryProbe()
    before = before or {}
    model = {"model": lm} if lm is not None else {
        "model": impl["model"], "model_args": impl["model_args"], "batch_size": impl.get("batch_size"),
        "device": impl.get("device")}
    gc.collect()
    probe.start()
    with RequestTimers(lm) if lm is not None else contextlib.nullcontext() as timers:
        start = time.perf_counter()
        results = lm_eval.simple_evaluate(
            **model,
            tasks=step["tasks"],
            limit=step.get("limit"),
            use_cache=step.get("use_cache"),
            log_samples=True,
            task_manager=manager,
            random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
        )
        eval_s = time.perf_counter() - start
    record = {"eval_s": eval_s, "request_types": timers.by_type if timers else {}} | probe.stop()
    record["extension"] = extension_report(results, lm, before)
    return record, results


def rank0_outputs(results: dict, impl: dict) -> dict:
    """What only rank 0 has after lm-eval's gather: per-sample outputs, workload and metrics."""
    samples = results.get("samples") or {}
    types = output_types(results)
    return {
        "samples": compact_samples(samples),
        "workload": workload(samples, types, count_tokens_with(impl)),
        "metrics": _plain(results.get("results", {})),
    }


def _plain(value):
    return json.loads(json.dumps(value, default=str))


class ModelPool:
    """The loaded model of each implementation; one that failed to load is not retried per step."""

    def __init__(self, impls: dict) -> None:
        self.impls = impls
        self.loaded: dict[str, object] = {}
        self.load_errors: dict[str, str] = {}
        self.first_load_s: dict[str, float] = {}
        self.engine_starts: dict[str, object] = {}
        self.counters: dict[str, dict] = {}
        """Each model's cost counters after its last run (what the next run's are counted from)."""

    def get(self, name: str, fresh: bool) -> tuple[object, float | None]:
        if name in self.load_errors:
            raise RuntimeError(self.load_errors[name])
        if not fresh and name in self.loaded:
            return self.loaded[name], None
        self.drop(name)
        try:
            lm, load_s = load_model(self.impls[name])
        except Exception as exc:
            self.load_errors[name] = f"model did not load: {type(exc).__name__}: {exc}"
            raise
        self.loaded[name] = lm
        self.first_load_s.setdefault(name, load_s)
        self.engine_starts[name] = engine_start_counter(lm, self.impls[name])
        return lm, load_s

    def drop(self, name: str) -> None:
        """Forget a model, shutting down what it started (vLLM engines, replica processes)."""
        lm = self.loaded.pop(name, None)
        try:  # not through a lazy __getattr__: the request cache's front would load its backend to close it
            inspect.getattr_static(lm, "close")
            close = lm.close
        except AttributeError:
            close = None
        if callable(close):
            try:
                close()
            except Exception:  # a model that fails to close must not lose the run's numbers
                logging.getLogger(__name__).warning("closing %s failed", name, exc_info=True)
        gc.collect()

    def close_all(self) -> None:
        for name in list(self.loaded):
            self.drop(name)


def run_step(step: dict, pool: ModelPool, manager) -> dict:
    record = {"label": step["label"], "impl": step["impl"], "side": step.get("side", step["impl"]),
              "measured": step.get("measured", True), "repetition": step.get("repetition"),
              "load_average_1min": os.getloadavg()[0]}
    try:
        if step.get("build_in_evaluate"):
            lm, load_s = None, None
        else:
            lm, load_s = pool.get(step["impl"], fresh=bool(step.get("fresh_model")))
        if load_s is not None:
            record["load_s"] = load_s
        before = pool.counters.get(step["impl"], {}) if load_s is None and lm is not None else {}
        measures, results = evaluate_step(step, lm, manager, pool.impls[step["impl"]], before)
        pool.counters[step["impl"]] = cost_counters(current_cost_report(lm, results))
        record |= measures
        if results is not None and step.get("keep_outputs", True):
            record |= rank0_outputs(results, pool.impls[step["impl"]])
        starts = pool.engine_starts.get(step["impl"])
        if starts is not None:
            record["engine_starts"] = starts()
    except Exception as exc:  # a failed step is reported; the rest of the plan still runs
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()[-4000:]
    finally:
        if step.get("fresh_model"):
            pool.drop(step["impl"])
    return record


def write_rank_file(plan: dict, record: dict) -> None:
    """Atomically (re)write ``rank<N>.json``: after every step, so a run stopped by its time limit
    keeps the steps it finished."""
    target = Path(plan["out_dir"]) / f"rank{record['rank']}.json"
    partial = target.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, default=str))
    partial.replace(target)


def run_plan(plan: dict, rank: int) -> dict:
    manager = task_manager(plan)
    pool = ModelPool(plan["impls"])
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    record = {"rank": rank, "world_size": world_size, "num_threads": plan.get("num_threads"),
              "load_s": pool.first_load_s, "steps": []}
    try:
        for step in plan["steps"]:
            record["steps"].append(run_step(step, pool, manager))
            write_rank_file(plan, record)
            if "error" in record["steps"][-1] and world_size > 1:
                break  # the other ranks are now out of step with this one: stop rather than hang
    finally:
        pool.close_all()
    return record


def run(plan: dict) -> None:
    """The child entry (:func:`benchmarks.lib.launch.run_plan`): every step, rank file after each."""
    rank = configure(plan)
    prime_imports(plan)
    write_rank_file(plan, run_plan(plan, rank))
