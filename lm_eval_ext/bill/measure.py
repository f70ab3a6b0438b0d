"""EDGE (torch): ``plan --measure``: the rates of this machine, from a few real batches of the workload.

The counting model (``hf_ext`` without weights, :class:`~lm_eval_ext.bill.count.WorkCounter`)
loads its weights once and its own engine runs, per request type, a sample of the very batches it
would run (``ScoringEngine.pack_call``: the real rows, families and token budget): after one untimed
warm-up batch, batches spread evenly over the sorted batch list until the type's share of the time
bound (:data:`MEASURE_BUDGET_S`) is spent. The prefill rate is the sampled tokens (prefix
forwards included) over their seconds, so padding and per-forward overhead count as often as
in the whole call.

Generation: one real prompt's prefill (tokens/s), and decode steps at the planned rows (the rows
the token budget holds: ``budget // (prompt + max_new_tokens)``, at most one per request) over a
KV cache of the mean prompt's length filled with random values (its content does not change a
step's time): decode tokens/s is rows per step second.
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
#: decode steps timed (after one untimed step)
DECODE_STEPS = 4
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
    import torch

    model, device = lm.model, lm.device
    prompt = max(prompts, key=len)
    with torch.no_grad():
        ids = torch.tensor([list(prompt)], device=device)
        model(ids, logits_to_keep=1)  # warm-up
        start = time.perf_counter()
        model(ids, logits_to_keep=1)
        prefill = len(prompt) / (time.perf_counter() - start)
        rows = planned_rows(lm, prompts, budgets)
        context = int(sum(len(p) for p in prompts) / len(prompts))
        step_s = _decode_step_s(model, rows, context, device, share_s)
    note = f"prefill of a {len(prompt)}-token prompt; decode steps of {rows} rows over {context} cached tokens"
    return Rates("measured", prefill, rows / step_s, spread=MEASURED_SPREAD, note=note)


def _decode_step_s(model: Any, rows: int, context: int, device: Any, share_s: float) -> float:
    """Seconds of one decode step of ``rows`` rows over a random KV cache of ``context`` tokens."""
    import torch

    from lm_eval_ext.hf.compute.kv_cache import plain_cache

    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dtype = next(model.parameters()).dtype
    cache = plain_cache(config)
    for layer in range(config.num_hidden_layers):
        keys = torch.randn(rows, kv_heads, context, head_dim, dtype=dtype, device=device)
        cache.update(keys, torch.randn_like(keys), layer)
    ids = torch.zeros((rows, 1), dtype=torch.long, device=device)
    times = []
    with torch.no_grad():
        for step in range(DECODE_STEPS + 1):
            mask = torch.ones((rows, context + step + 1), dtype=torch.long, device=device)
            positions = torch.full((rows, 1), context + step, dtype=torch.long, device=device)
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                  use_cache=True, logits_to_keep=1)
            times.append(time.perf_counter() - start)
            if sum(times) > share_s:
                break
    return sum(times[1:]) / max(1, len(times) - 1) if len(times) > 1 else times[0]


#: the tiny matmul and copy that stand for this CPU's peaks (paper estimates)
_PEAK_SIZE = 512
_COPY_BYTES = 64 * 2**20


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
        a @ a  # warm-up
        repeats = 8
        start = time.perf_counter()
        for _ in range(repeats):
            a @ a
        flops = repeats * 2 * _PEAK_SIZE**3 / (time.perf_counter() - start)
        source = torch.empty(_COPY_BYTES // 4, dtype=torch.float32)
        target = torch.empty_like(source)
        target.copy_(source)
        start = time.perf_counter()
        target.copy_(source)
        bandwidth = 2 * _COPY_BYTES / (time.perf_counter() - start)  # read + write
        known[key] = {"flops_per_s": flops, "bytes_per_s": bandwidth}
        try:
            write_json_atomic(path, known, indent=1)
        except OSError as exc:
            logger.debug("cpu peak not remembered in %s: %s", path, exc)
    return Peak("this CPU (measured matmul)", known[key]["flops_per_s"], known[key]["bytes_per_s"])
