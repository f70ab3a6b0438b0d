"""EDGE: per-run probes inside a worker process: peak memory, request-type timers, workload size,
engine starts, and the counters lm-eval-ext attaches to its results (cost report, cache hits).
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")

#: keys lm-eval 0.4.13 itself puts in simple_evaluate's result; anything else was added by a model.
STOCK_RESULT_KEYS = {
    "results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
    "n-samples", "samples", "config", "git_hash", "date", "pretty_env_info", "transformers_version",
    "lm_eval_version", "upper_git_hash", "tokenizer_pad_token", "tokenizer_eos_token",
    "tokenizer_bos_token", "eot_token_id", "max_length", "task_hashes", "model_source", "model_name",
    "model_name_sanitized", "system_instruction", "system_instruction_sha", "fewshot_as_multiturn",
    "chat_template", "chat_template_sha", "start_time", "end_time", "total_evaluation_time_seconds",
}

#: counters read from an extension's cost report (issue 4: per "task/request type" entries;
#: issue 5 adds cache hits). Both spellings of computed tokens are accepted.
#: ``wall_s`` is the time the engine spent in its batches.
COUNTER_KEYS = (
    "num_requests", "useful_tokens", "tokens_computed", "computed_tokens", "padded_tokens",
    "cache_hits", "cache_misses", "oom_retries", "wall_s",
    # generation (continuous loop): prompt tokens prefilled, tokens decoded, decode steps and the rows in them
    "prefill_tokens", "decode_tokens", "decode_steps", "live_row_steps",
    # vllm_ext's prefix cache (lm_eval_ext/backend/cost_report.py)
    "stock_tokens", "cached_tokens", "minimal_tokens", "warmup_requests", "probe_requests", "fallback_requests",
)

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class MemoryProbe:
    """Peak resident memory (and GPU memory) of this process during one run.

    Linux lets a process reset its own high-water mark (``5`` into ``/proc/self/clear_refs``), so
    several runs in one process each get their own peak. ``growth`` is the peak minus the resident
    size at the start of the run: what the run itself added on top of the loaded models.
    """

    def __init__(self) -> None:
        self.start_rss_bytes = 0
        self.start_gpu_bytes = 0

    def start(self) -> None:
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            pass  # peak then covers the whole process so far; still an upper bound
        self.start_rss_bytes = _status_bytes("VmRSS")
        cuda = _cuda()
        if cuda is not None:
            cuda.synchronize()
            cuda.reset_peak_memory_stats()
            self.start_gpu_bytes = cuda.memory_allocated()

    def stop(self) -> dict:
        peak_rss = _status_bytes("VmHWM")
        out = {"peak_rss_bytes": peak_rss, "rss_growth_bytes": max(0, peak_rss - self.start_rss_bytes)}
        cuda = _cuda()
        if cuda is not None:
            cuda.synchronize()
            peak_gpu = cuda.max_memory_allocated()
            out |= {"peak_gpu_bytes": peak_gpu, "gpu_growth_bytes": max(0, peak_gpu - self.start_gpu_bytes)}
        return out


def _status_bytes(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda if torch.cuda.is_available() else None


class RequestTimers:
    """Wraps an LM's three request methods on the instance to time each and count what it computed.

    lm-eval's ``CachingLM`` (``--use_cache``) calls the wrapped method with only the requests it
    did not find, so ``requests`` here is the number the model really computed.
    """

    def __init__(self, lm: Any) -> None:
        self.lm = lm
        self.by_type: dict[str, dict] = {}

    def __enter__(self) -> RequestTimers:
        for name in REQUEST_TYPES:
            original = getattr(self.lm, name)
            setattr(self.lm, name, self._timed(name, original))
        return self

    def __exit__(self, *exc) -> None:
        for name in REQUEST_TYPES:
            self.lm.__dict__.pop(name, None)

    def _timed(self, name: str, original):
        def timed(requests, *args, **kwargs):
            start = time.perf_counter()
            try:
                return original(requests, *args, **kwargs)
            finally:
                entry = self.by_type.setdefault(name, {"time_s": 0.0, "computed_requests": 0, "calls": 0})
                entry["time_s"] += time.perf_counter() - start
                entry["computed_requests"] += len(requests)
                entry["calls"] += 1

        return timed


def workload(samples: dict[str, list[dict]], output_types: dict[str, str], count_tokens) -> dict:
    """Requests and tokens per task: context plus continuation (or generated text) per request.

    The same workload is counted for every implementation, so tokens/s ratios equal speed ratios.
    """
    out = {}
    for task, rows in samples.items():
        requests = tokens = 0
        seen_docs = set()
        for row in rows:
            if row["doc_id"] in seen_docs:  # lm-eval logs a doc once per filter (gsm8k has two)
                continue
            seen_docs.add(row["doc_id"])
            for args, resp in zip(row["arguments"], row["resps"]):
                requests += 1
                texts = [a for a in args if isinstance(a, str)]
                if output_types.get(task) == "generate_until":
                    texts.append(resp[0] if isinstance(resp, (list, tuple)) else str(resp))
                tokens += sum(count_tokens(t) for t in texts)
        out[task] = {"requests": requests, "tokens": tokens, "request_type": output_types.get(task)}
    return out


def current_cost_report(lm: Any, results: dict | None = None) -> dict:
    """The extension's cost report as a dict: from the model (cumulative over its life), else from
    ``results["config"]["cost_report"]`` where lm-eval copies ``get_model_info()``. Read without a
    lazy ``__getattr__`` (the request cache's front would load its backend for it)."""
    try:
        inspect.getattr_static(lm, "cost_report")
        report = getattr(lm, "cost_report", None)
    except AttributeError:
        report = None
    if hasattr(report, "as_dict"):
        return report.as_dict()
    if isinstance(report, dict):
        return report
    return ((results or {}).get("config") or {}).get("cost_report") or {}


def cost_counters(report: dict) -> dict[str, dict[str, float]]:
    """``{task: {counter: value}}`` summed over the report's ``"task/request type"`` entries."""
    out: dict[str, dict[str, float]] = {}
    for key, entry in report.items():
        if not isinstance(entry, dict):
            continue
        into = out.setdefault(str(entry.get("task") or key.split("/")[0]), {})
        for name in COUNTER_KEYS:
            value = entry.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                into[name] = into.get(name, 0) + value
    return out


def counters_delta(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """What one run added to a report that accumulates over the model's life."""
    out = {}
    for task, counters in after.items():
        prior = before.get(task, {})
        delta = {k: v - prior.get(k, 0) for k, v in counters.items()}
        if any(delta.values()):
            out[task] = delta
    return out


def request_cache_counters(results: dict | None) -> dict[str, dict[str, float]]:
    """``{task: {cache_hits, cache_misses}}`` from the request cache's report (issue 5), which lm-eval
    copies into ``results["config"]["request_cache"]`` as ``{"tasks": {task: {request type: {...}}}}``.
    It counts one model's life; the cache scenario builds a fresh model for every run."""
    report = ((results or {}).get("config") or {}).get("request_cache") or {}
    out: dict[str, dict[str, float]] = {}
    for task, types in (report.get("tasks") or {}).items():
        for counters in types.values():
            into = out.setdefault(task, {})
            for source, name in (("hits", "cache_hits"), ("misses", "cache_misses")):
                into[name] = into.get(name, 0) + counters.get(source, 0)
    return out


def extension_report(results: dict | None, lm: Any, before: dict) -> dict:
    """Keys the model added to lm-eval's results, this run's cost and cache counters per task, and
    whether a fully cached run skipped the backend (the request cache's fast path)."""
    extra = sorted(k for k in (results or {}) if k not in STOCK_RESULT_KEYS)
    by_task = counters_delta(before, cost_counters(current_cost_report(lm, results)))
    for task, counters in request_cache_counters(results).items():
        by_task.setdefault(task, {}).update(counters)
    report = {"extra_result_keys": extra, "by_task": by_task}
    cache = ((results or {}).get("config") or {}).get("request_cache") or {}
    if "fast_path" in cache or "model_loaded" in cache:
        report["fast_path"] = bool(cache.get("fast_path"))
    return report


def engine_start_counter(lm: Any, impl: dict) -> Callable[[], int] | None:
    """Engines ``lm`` has built since it was loaded, where that can be counted: ``vllm_ext`` counts
    its own; stock lm-eval ``vllm`` builds one in its constructor at ``data_parallel_size`` 1, and
    ``data_parallel_size`` fresh ones (Ray tasks) on every ``_model_generate`` call above that."""
    if impl.get("model") == "vllm_ext":
        return lambda: int(lm.num_engine_starts)
    if impl.get("model") != "vllm":
        return None
    size = int(getattr(lm, "data_parallel_size", 1) or 1)
    if size <= 1:
        return lambda: 1
    calls = {"starts": 0}
    original = lm._model_generate

    def counting(*args, **kwargs):
        calls["starts"] += size
        return original(*args, **kwargs)

    lm._model_generate = counting  # the instance attribute shadows the method for this model only
    return lambda: calls["starts"]
