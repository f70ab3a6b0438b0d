"""EDGE (child side, started by :mod:`benchmarks.lib.launch` in the vLLM interpreter): where a
multiple-choice evaluation's scoring time goes, for stock ``vllm`` or ``vllm_ext``: CPU seconds of
each part of the ``loglikelihood`` call, as proportions (the ``vllm-profile`` scenario).

One process, the engine in it (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), one task shape of
:mod:`benchmarks.lib.vllm_mc_shapes`. vLLM's internals are wrapped to count process CPU time
(every thread; proportions stay meaningful on a shared machine, absolute seconds do not):

- ``forward``: the model's forward pass (``UniProcExecutor.execute_model``);
- ``prompt logprobs``: LM head, log-softmax and top-k for prompt logprobs (the V1 runner's
  ``_get_prompt_logprobs_dict``, or ``vllm_ext``'s replacement);
- ``sampling``: the rest of ``sample_tokens`` (the generated token, its logprobs);
- ``vLLM engine, Python``: the rest of ``LLMEngine.step`` (scheduler, inputs, output processing);
- ``requests and parsing``: the rest of ``loglikelihood`` (lm-eval's and lm-eval-ext's request
  handling, logprob parsing, the request cache).

Also engine steps, the tokens the scheduler handed to the model, requests sent, and, with
``top=N``, the N functions with the most own time.
"""

from __future__ import annotations

import contextlib
import cProfile
import functools
import io
import os
import pstats
import time
from collections import Counter
from pathlib import Path

PARTS = ("forward", "prompt logprobs", "sampling", "vLLM engine, Python", "requests and parsing")


class CpuClock:
    """Process CPU seconds and calls per wrapped method."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def wrap(self, owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)  # vllm_ext checks the runner method's signature before replacing it
        def timed(*args, **kwargs):
            started = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.process_time() - started
                self.calls[label] += 1

        setattr(owner, name, timed)


def instrument(clock: CpuClock, scheduled: Counter) -> None:
    """Wrap vLLM's step, executor and prompt-logprob code (before any engine starts)."""
    from vllm.v1.engine.llm_engine import LLMEngine
    from vllm.v1.executor.uniproc_executor import UniProcExecutor
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = UniProcExecutor.execute_model

    def execute_model(executor, scheduler_output, *args, **kwargs):
        scheduled["tokens"] += scheduler_output.total_num_scheduled_tokens
        scheduled["new requests"] += len(scheduler_output.scheduled_new_reqs)
        return original(executor, scheduler_output, *args, **kwargs)

    UniProcExecutor.execute_model = execute_model
    clock.wrap(UniProcExecutor, "execute_model", "forward")
    clock.wrap(UniProcExecutor, "sample_tokens", "sample_tokens")
    clock.wrap(GPUModelRunner, "_get_prompt_logprobs_dict", "prompt logprobs")
    try:  # vllm_ext's replacement, bound per engine at install (absent in checkouts before it)
        from lm_eval_ext.vllm import prompt_logprobs
    except ImportError:
        prompt_logprobs = None
    if prompt_logprobs is not None:
        clock.wrap(prompt_logprobs, "prompt_logprobs_from", "prompt logprobs")
    clock.wrap(LLMEngine, "step", "step")


def profile(variant: str, model: str, shape_name: str, limit: int, data_dir: str, task_dir: str,
            dtype: str = "float32", top: int = 0) -> dict:
    """Child target: one evaluation of ``shape_name`` with ``variant``, its ``loglikelihood`` call's
    CPU seconds by part (and ``lines``: :func:`format_profile`)."""
    import lm_eval
    import lm_eval_ext.registry
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    from benchmarks.lib.vllm_mc_shapes import SHAPES, write_tasks

    clock, scheduled = CpuClock(), Counter()
    instrument(clock, scheduled)
    lm_eval_ext.registry.register_models()
    started = time.perf_counter()
    lm = get_model(variant).create_from_arg_string(f"pretrained={model},dtype={dtype},enforce_eager=True"
                                                    + (",cache=off" if variant == "vllm_ext" else ""), {})
    if variant == "vllm_ext":
        lm.engine  # noqa: B018
    build_s = time.perf_counter() - started
    clock.seconds.clear()
    clock.calls.clear()
    clock.wrap(lm, "loglikelihood", "loglikelihood")
    profiler = cProfile.Profile(time.process_time) if top else None
    tasks_dir = write_tasks(Path(data_dir), Path(task_dir))
    with profiler if profiler is not None else contextlib.nullcontext():
        lm_eval.simple_evaluate(model=lm, tasks=list(SHAPES[shape_name].tasks), limit=limit, bootstrap_iters=0,
                                task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False))
    s = clock.seconds
    parts = {"forward": s["forward"], "prompt logprobs": s["prompt logprobs"],
             "sampling": s["sample_tokens"] - s["prompt logprobs"],
             "vLLM engine, Python": s["step"] - s["forward"] - s["sample_tokens"],
             "requests and parsing": s["loglikelihood"] - s["step"]}
    out = {"variant": variant, "shape": shape_name, "limit": limit, "build_wall_s": round(build_s, 1),
           "loglikelihood_cpu_s": round(s["loglikelihood"], 2), "steps": clock.calls["step"],
           "scheduled_tokens": scheduled["tokens"], "requests": scheduled["new requests"],
           "parts_cpu_s": {k: round(v, 2) for k, v in parts.items()},
           "parts_share": {k: round(v / s["loglikelihood"], 3) for k, v in parts.items()},
           "load_avg_1m": round(os.getloadavg()[0], 1)}
    if hasattr(lm, "cost_report"):
        out["cost_report"] = lm.cost_report.as_dict()
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
        out["cprofile"] = text.getvalue()
    out["lines"] = format_profile(out).splitlines()
    return out


def format_profile(result: dict) -> str:
    lines = [f"{result['variant']} on {result['shape']} ({result['limit']} docs/task): loglikelihood "
             f"{result['loglikelihood_cpu_s']} CPU s, {result['steps']} engine steps, {result['requests']} requests, "
             f"{result['scheduled_tokens']} tokens scheduled (load {result['load_avg_1m']})"]
    for part in PARTS:
        lines.append(f"  {part:<22} {100 * result['parts_share'][part]:5.1f} %")
    return "\n".join(lines)
