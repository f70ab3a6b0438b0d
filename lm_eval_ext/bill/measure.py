"""EDGE (torch): ``plan --measure``: the rates of this machine, from a few real batches of the workload.

The counting model (``hf_ext`` without weights, :class:`~lm_eval_ext.bill.count.WorkCounter`)
loads its weights once and its own engine runs, per request type, a sample of the very batches it
would run (``ScoringEngine.pack_call``: the real rows, families and token budget): after one untimed
warm-up batch, batches spread evenly over the sorted batch list until the type's share of the time
bound (:data:`MEASURE_BUDGET_S`) is spent. The prefill rate is the sampled tokens (prefix
forwards included) over their seconds, so padding and per-forward overhead count as often as
in the whole call.

Generation: the engine's own continuous loop on up to :data:`MAX_TIMED_ROWS` real prompts in one
pool, each step timed: the prefill rate from the steps that take a prompt in, and a decode step's
seconds as a line in its live rows (one row to the full pool). The whole counted work's decode is
then priced step by step at the rows the engine would plan (``generation_rows``), with the
staggered joins and the tail that the last rows decode alone
(``estimate.time_model.continuous_decode_seconds``): a call of few or uneven generations runs
many steps at few rows, which a rate at the full pool would miss (GSM8K 5-shot, 4 documents:
112 decode steps for 234 decode tokens).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from lm_eval_ext.errors import UserError
from lm_eval_ext.bill.count import CountedWork, WorkCounter
from lm_eval_ext.estimate.time_model import Rates, continuous_decode_seconds

logger = logging.getLogger(__name__)

#: wall time the measurement may take after the weights are loaded, shared by the request types
MEASURE_BUDGET_S = 30.0
#: sampled batches per request type, at most (plus the warm-up)
MAX_BATCHES = 6
#: tokens a timed row generates after its first (the last row twice as many: the one-row tail)
DECODE_STEPS = 16
#: rows of a timed decode at most (prefilling more real prompts costs more than it tells)
MAX_TIMED_ROWS = 4
#: a sampled request generates at most this many tokens (its length is then a lower bound)
MAX_SAMPLE_NEW_TOKENS = 256
#: the measured rate is this close to what a whole call reaches (sampling, load on the machine)
MEASURED_SPREAD = (0.8, 1.25)


def measure_rates(counter: WorkCounter, counted: CountedWork, *, budget_s: float = MEASURE_BUDGET_S
                  ) -> tuple[dict[str, Rates], dict[str, float]]:
    """Rates per request type of the counted work, timed on this machine with ``hf_ext``'s engine,
    and ``{task: tokens generated per request}`` on the generation tasks it sampled."""
    if counter.backend != "hf":
        raise UserError("--measure times hf_ext's engine; for --backend vllm the estimate comes from the "
                        "history of a finished vllm_ext run, or on paper: leave --measure out")
    lm = counter.lm
    lm.load_weights()
    kinds = [kind for kind, inputs in counted.inputs.items() if inputs and inputs[0]]
    rates: dict[str, Rates] = {}
    generated: dict[str, float] = {}
    for kind in kinds:
        share_s = budget_s / len(kinds)
        if kind == "generate_until":
            rates[kind], generated = _generation_rates(lm, *counted.inputs[kind])
        else:
            rates[kind] = _scoring_rates(lm, kind, *counted.inputs[kind], share_s=share_s)
        logger.info("measured %s: %.0f prefill tokens/s", kind, rates[kind].prefill_tokens_per_s)
    return rates, generated


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
    """Rows decoding at once: the engine's own pool size (``generation_rows``) for these prompts."""
    from lm_eval_ext.hf.compute.engine import call_families, loop_columns
    from lm_eval_ext.hf.policy.generation_rows import generation_rows

    requests = _requests(prompts, budgets)
    columns = loop_columns(requests, call_families(requests))
    stats = {"width_tokens": columns, "scored_fraction": 1.0 / columns}
    budget, cap = lm.engine.budgets.limits("generate_until", stats, lm.engine.score_batch)
    return generation_rows(budget, cap, columns, len(requests))


def _requests(prompts: Sequence[Sequence[int]], budgets: Sequence[int],
              stops: Sequence[tuple[str, ...]] | None = None) -> list:
    from lm_eval_ext.hf.policy.batching import GenerationRequest

    stops = stops if stops is not None else [()] * len(prompts)
    return [GenerationRequest(i, tuple(p), n, tuple(stop))
            for i, (p, n, stop) in enumerate(zip(prompts, budgets, stops, strict=True))]


def _generation_rates(lm: Any, prompts: Sequence[Sequence[int]], budgets: Sequence[int], tasks: Sequence[str],
                      lengths: Sequence[float], stops: Sequence[tuple[str, ...]]) -> tuple[Rates, dict[str, float]]:
    """The engine's own continuous loop on a few real requests (their prompts, stop strings and
    ``max_new_tokens``), run to their end: the prefill rate, a decode step's seconds as a line
    in its live rows, and the tokens the model really generates on each sampled task. Then the
    decode of the whole counted work, at those lengths, priced step by step at the planned rows
    (``continuous_decode_seconds``: the staggered joins and the last rows' tail decoding alone),
    as one decode rate. Returns the rates and ``{task: tokens generated per request}``."""
    if not lm.engine.continuous:
        return _static_generation_rates(lm, prompts), {}
    rows = planned_rows(lm, prompts, budgets)
    sample = _sample(prompts, tasks, min(rows, MAX_TIMED_ROWS))
    cap = [min(budgets[i], MAX_SAMPLE_NEW_TOKENS) for i in sample]
    _timed_loop(lm, [prompts[sample[0]]], [2], [()])  # warm-up: allocations, threads
    steps, generated = _timed_loop(lm, [prompts[i] for i in sample], cap, [stops[i] for i in sample])
    decode_points = [(rows_, s) for s, rows_, prefill in steps if not prefill]
    if len(decode_points) < 2:  # every sampled row ended at once: time a decode without stops
        decode_points = [(r, s) for s, r, prefill in _timed_loop(
            lm, [prompts[i] for i in sample], [1 + DECODE_STEPS] * (len(sample) - 1) + [1 + 2 * DECODE_STEPS],
            [()] * len(sample))[0] if not prefill]
    step_s, row_s = _fit_decode_steps(decode_points)
    prefill_tokens = sum(prefill for _, _, prefill in steps)
    prefill_s = sum(max(s - row_s * rows_, 1e-6) for s, rows_, prefill in steps if prefill)
    by_task: dict[str, list[int]] = {}
    for i, n in zip(sample, generated, strict=True):
        by_task.setdefault(tasks[i], []).append(n)
    mean_of = {task: sum(ns) / len(ns) for task, ns in by_task.items()}
    expected = [min(max(1.0, mean_of.get(task, n)), budget) for n, budget, task in zip(lengths, budgets, tasks,
                                                                                       strict=True)]
    decode_tokens = sum(n - 1 for n in expected)
    decode_s = continuous_decode_seconds(expected, rows, step_s=step_s, row_s=row_s)
    decode_rate = decode_tokens / decode_s if decode_s > 0 else rows / step_s
    note = (f"engine's continuous loop on {len(sample)} real request(s): {sum(generated)} tokens generated; "
            f"a decode step {1000 * step_s:.0f} ms + {1000 * row_s:.1f} ms a further row; {rows} planned rows, "
            f"{decode_tokens:.0f} decode tokens in {decode_s:.1f} s step by step")
    return Rates("measured", prefill_tokens / max(prefill_s, 1e-9), decode_rate, spread=MEASURED_SPREAD,
                 note=note), mean_of


def _sample(prompts: Sequence[Sequence[int]], tasks: Sequence[str], count: int) -> list[int]:
    """``count`` request indices, the tasks in turn, each task's median-length prompts first."""
    by_task: dict[str, list[int]] = {}
    for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i])):
        by_task.setdefault(tasks[i], []).append(i)
    queues = [order[len(order) // 2:] + order[: len(order) // 2] for order in by_task.values()]
    picked: list[int] = []
    while len(picked) < count and any(queues):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return picked


def _timed_loop(lm: Any, prompts: Sequence[Sequence[int]], budgets: Sequence[int], stops: Sequence[tuple[str, ...]]
                ) -> tuple[list[tuple[float, int, int]], list[int]]:
    """The engine's continuous loop over ``prompts`` in one pool: ``(seconds, decoding rows,
    prefill tokens)`` of each step, and each request's generated token count."""
    from lm_eval_ext.hf.compute.engine import call_families

    requests = _requests(prompts, budgets, stops)
    steps: list[tuple[float, int, int]] = []
    generated = [0] * len(requests)
    last = [time.perf_counter(), 0, 0]  # time, decode tokens, prefill tokens so far

    def on_step(_tokens: int, stats: Any) -> None:
        now = time.perf_counter()
        steps.append((now - last[0], stats.decode_tokens - last[1], stats.prefill_tokens - last[2]))
        last[:] = [now, stats.decode_tokens, stats.prefill_tokens]

    def on_finished(index: int, tokens: list[int]) -> None:
        generated[index] = len(tokens)

    lm.engine.run_loop(requests, call_families(requests), max_rows=len(requests), on_finished=on_finished,
                       on_step=on_step)
    return steps, generated


def _fit_decode_steps(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """``(seconds of a one-row step, seconds per further row)``: a least-squares line through the
    decode-only steps' (rows, seconds), its slope kept >= 0 (one row count alone: a flat line)."""
    if not points:
        raise UserError("--measure: the timed generation produced no decode step (every row ended at once); "
                        "leave --measure out to use the history or the paper estimate")
    n = len(points)
    mean_rows = sum(r for r, _ in points) / n
    mean_s = sum(s for _, s in points) / n
    spread = sum((r - mean_rows) ** 2 for r, _ in points)
    slope = max(0.0, sum((r - mean_rows) * (s - mean_s) for r, s in points) / spread) if spread else 0.0
    one_row_s = max(mean_s - slope * (mean_rows - 1), 1e-6)
    return one_row_s, slope


def _static_generation_rates(lm: Any, prompts: Sequence[Sequence[int]]) -> Rates:
    """Models the continuous loop refuses generate in static batches (``generation.py``): the
    prefill of a batch of real prompts and its lockstep decode, timed in one engine batch each."""
    rows = min(len(prompts), MAX_TIMED_ROWS)
    batch = [tuple(p) for p in sorted(prompts, key=len)[len(prompts) // 2:][:rows]] or [tuple(prompts[0])]
    _engine_generation(lm, batch[:1], 1)  # warm-up
    tokens, first_s, _ = _engine_generation(lm, batch, 1)
    _, whole_s, generated = _engine_generation(lm, batch, 1 + DECODE_STEPS)
    steps = max(1.0, (generated - len(batch)) / len(batch))
    step_s = max(whole_s - first_s, 1e-6) / steps
    note = f"engine generation (static batches): {len(batch)} real prompt(s), {steps:.0f} decode steps"
    return Rates("measured", tokens / max(first_s, 1e-9), len(batch) / step_s, spread=MEASURED_SPREAD, note=note)


def _engine_generation(lm: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> tuple[int, float, int]:
    """(tokens computed, seconds, tokens generated) of one static engine generation batch."""
    batch = _requests(prompts, [max_new_tokens] * len(prompts))
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
