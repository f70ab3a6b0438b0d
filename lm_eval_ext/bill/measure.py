"""EDGE (torch): ``plan --measure``: the rates of this machine, from a few real batches of the workload.

The counting model (``hf_ext`` without weights, :class:`~lm_eval_ext.bill.count.WorkCounter`)
loads its weights once and its own engine runs, per request type, a sample of the very batches it
would run (``ScoringEngine.pack_call``: the real rows, families and token budget): after one untimed
warm-up batch, batches spread evenly over the sorted batch list until the type's share of the time
bound (:data:`MEASURE_BUDGET_S`) is spent. The prefill rate is the sampled tokens (prefix
forwards included) over their seconds, so padding and per-forward overhead count as often as
in the whole call.

Generation: the engine's own generation of real prompts, one token then a few more: the prefill
rate, and the seconds per decode step at the planned rows (the rows the token budget holds:
``budget // (prompt + max_new_tokens)``, at most one per request), from up to
:data:`MAX_TIMED_ROWS` timed rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from lm_eval_ext.errors import UserError
from lm_eval_ext.bill.count import CountedWork, WorkCounter
from lm_eval_ext.estimate.time_model import Rates

logger = logging.getLogger(__name__)

#: wall time the measurement may take after the weights are loaded, shared by the request types
MEASURE_BUDGET_S = 30.0
#: sampled batches per request type, at most (plus the warm-up)
MAX_BATCHES = 6
#: tokens generated after the first in a timed decode
DECODE_STEPS = 8
#: rows of a timed decode at most (prefilling more real prompts costs more than it tells)
MAX_TIMED_ROWS = 4
#: the measured rate is this close to what a whole call reaches (sampling, load on the machine)
MEASURED_SPREAD = (0.8, 1.25)


def measure_rates(counter: WorkCounter, counted: CountedWork, *, budget_s: float = MEASURE_BUDGET_S
                  ) -> dict[str, Rates]:
    """Rates per request type of the counted work, timed on this machine with ``hf_ext``'s engine."""
    if counter.backend != "hf":
        raise UserError("--measure times hf_ext's engine; for --backend vllm the estimate comes from the "
                        "history of a finished vllm_ext run, or on paper: leave --measure out")
    lm = counter.lm
    lm.load_weights()
    kinds = [kind for kind, inputs in counted.inputs.items() if inputs and inputs[0]]
    rates: dict[str, Rates] = {}
    for position, kind in enumerate(kinds):
        share_s = budget_s / len(kinds)
        if kind == "generate_until":
            rates[kind] = _generation_rates(lm, *counted.inputs[kind], share_s=share_s)
        else:
            rates[kind] = _scoring_rates(lm, kind, *counted.inputs[kind], share_s=share_s)
        logger.info("measured %s: %.0f prefill tokens/s", kind, rates[kind].prefill_tokens_per_s)
    return rates


def _spread(batches: Sequence[Any], count: int) -> list[Any]:
    """``count`` batches evenly spaced over ``batches`` (sorted by size, longest rows first)."""
    if len(batches) <= count:
        return list(batches)
    step = len(batches) / count
    return [batches[int(i * step + step / 2)] for i in range(count)]


def _scoring_rates(lm: Any, kind: str, requests: Sequence, tasks: Sequence[str], *, share_s: float) -> Rates:
    engine = lm.engine
    batches, _, _ = engine.pack_call(kind, requests, tasks)
    engine.score_batch(min(batches, key=lambda b: b.padded_tokens))  # warm-up: allocations, threads
    engine.prefixes.clear()
    tokens, seconds = 0, 0.0
    for batch in _spread(batches, MAX_BATCHES):
        before = engine.prefixes.computed_tokens
        start = time.perf_counter()
        engine.score_batch(batch)
        seconds += time.perf_counter() - start
        tokens += batch.computed_tokens + engine.prefixes.computed_tokens - before
        if seconds > share_s:
            break
    engine.prefixes.clear()
    note = f"{tokens} tokens of {len(batches)} batches' sample in {seconds:.1f} s"
    return Rates("measured", tokens / max(seconds, 1e-9), spread=MEASURED_SPREAD, note=note)


def planned_rows(lm: Any, prompts: Sequence[Sequence[int]], budgets: Sequence[int]) -> int:
    """Rows decoding at once: what the engine's generation budget holds, at most one per request."""
    width = sum(len(p) for p in prompts) / len(prompts) + sum(budgets) / len(budgets)
    stats = {"width_tokens": int(width), "scored_fraction": 1.0 / max(1.0, width)}
    budget, cap = lm.engine.budgets.limits("generate_until", stats, lm.engine.score_batch)
    rows = len(prompts) if budget is None else max(1, int(budget // width))
    return max(1, min(rows, len(prompts), cap or rows))


def _generation_rates(lm: Any, prompts: Sequence[Sequence[int]], budgets: Sequence[int], tasks: Sequence[str],
                      lengths: Sequence[float], *, share_s: float) -> Rates:
    """Prefill and decode through the engine's own generation (its prefix sharing, prompt-lookup
    drafts and per-step work included): a batch of real prompts generating one token, then
    :data:`DECODE_STEPS` more; decode seconds per step at ``rows`` rows, extrapolated linearly in
    the rows from one row and :data:`MAX_TIMED_ROWS` when the budget holds more."""
    rows = planned_rows(lm, prompts, budgets)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    middle = order[len(order) // 2:] + order[: len(order) // 2]  # median-length prompts first
    timed_rows = min(rows, MAX_TIMED_ROWS)
    _engine_generation(lm, [prompts[middle[0]]], 1)  # warm-up
    spent_s, points = 0.0, []
    prefill_tokens, prefill_s = 0, 0.0
    for count in sorted({timed_rows, 1}, reverse=True):
        batch = [prompts[i] for i in middle[:count]]
        tokens, first_s, _ = _engine_generation(lm, batch, 1)
        _, whole_s, generated = _engine_generation(lm, batch, 1 + DECODE_STEPS)
        if count == timed_rows:
            prefill_tokens, prefill_s = tokens, first_s
        steps = max(1.0, (generated - count) / count)  # each row's tokens after its first
        points.append((count, max(whole_s - first_s, 1e-6) / steps))
        spent_s += first_s + whole_s
        if spent_s > share_s:
            break
    (r2, s2), (r1, s1) = points[0], points[-1]
    slope = (s2 - s1) / (r2 - r1) if r2 != r1 else 0.0
    step_s = max(1e-6, s2 + slope * (rows - r2))
    note = (f"engine generation: {timed_rows} real prompt(s), decode steps at {r2} row(s)"
            + (f" extrapolated to {rows}" if rows != r2 else ""))
    return Rates("measured", prefill_tokens / max(prefill_s, 1e-9), rows / step_s, spread=MEASURED_SPREAD, note=note)


def _engine_generation(lm: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> tuple[int, float, int]:
    """(tokens computed, seconds, tokens generated) of one engine generation batch."""
    from lm_eval_ext.hf.policy.batching import GenerationRequest

    batch = [GenerationRequest(i, tuple(p), max_new_tokens, ()) for i, p in enumerate(prompts)]
    start = time.perf_counter()
    outputs, cost = lm.engine.generate_batch(batch)
    return cost.computed_tokens, time.perf_counter() - start, sum(len(o) for o in outputs)


#: the tiny matmul and copy that stand for this CPU's peaks (paper estimates)
_PEAK_SIZE = 512
_COPY_BYTES = 64 * 2**20
_PEAK_TRIALS = 12


def cpu_peak(description_key: str, dtype: str = "float32"):
    """This CPU's achievable matmul FLOP/s and copy bandwidth in ``dtype``: measured once (~0.3 s)
    and remembered per machine (``<cache root>/cpu_peak.json``)."""
    import torch

    from lm_eval_ext.estimate.time_model import Peak
    from lm_eval_ext.files import cache_root, read_json, write_json_atomic

    path = cache_root() / "cpu_peak.json"
    known = read_json(path, {}) or {}
    key = f"{description_key}:{dtype}:{torch.get_num_threads()}"
    if key not in known:
        torch_dtype = getattr(torch, dtype, torch.float32)
        a = torch.randn(_PEAK_SIZE, _PEAK_SIZE, dtype=torch_dtype)
        source = torch.empty(_COPY_BYTES // 4, dtype=torch.float32)
        target = torch.empty_like(source)
        a @ a  # warm-up
        target.copy_(source)
        matmul_s, copy_s = [], []
        for _ in range(_PEAK_TRIALS):  # the best trial: other processes only ever slow one down
            start = time.perf_counter()
            a @ a
            matmul_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            target.copy_(source)
            copy_s.append(time.perf_counter() - start)
        flops = 2 * _PEAK_SIZE**3 / min(matmul_s)
        bandwidth = 2 * _COPY_BYTES / min(copy_s)  # read + write
        known[key] = {"flops_per_s": flops, "bytes_per_s": bandwidth}
        try:
            write_json_atomic(path, known, indent=1)
        except OSError as exc:
            logger.debug("cpu peak not remembered in %s: %s", path, exc)
    return Peak("this CPU (measured matmul)", known[key]["flops_per_s"], known[key]["bytes_per_s"])
