"""PURE: counted tokens -> seconds, from rates that were measured, remembered, or worked out on paper.

A request type's time on one replica is its prefill tokens at the prefill rate plus its decode
tokens at the decode rate (scoring has no decode)::

    seconds = prefill_tokens / prefill_tokens_per_s + decode_tokens / decode_tokens_per_s

Under data parallel with ``N`` replicas every process gets ``1/N`` of the documents and computes
each few-shot prefix itself: ``prefill = (prefill_tokens + (N - 1) * shared_prefix_tokens) / N``.

Each :class:`Rates` says where it came from (``source``) and how far it may be off (``spread``:
the factors the seconds are multiplied by for ``seconds_low`` and ``seconds_high``); a
generation's range also spans its unknown length (one token to ``max_new_tokens``).

- *measured*: real batches of the workload timed on this machine (``bill/measure.py``);
- *history*: the rates of this model's last finished run on this hardware (``estimate/history.py``);
  a task it ran before is priced at that task's own seconds per computed token;
- *paper*: FLOPs and bytes per token from the model facts against the hardware's peaks
  (:func:`paper_rates`), for hardware that is not here.

Worked example (paper, prefill): SmolLM2-135M has 106.2M matrix parameters in its 30 layers:
~2 x 106.2M = 212 MFLOP per token plus attention; on one H100 (989 TFLOP/s bf16 dense) at an
efficiency of 0.25-0.6 that is 1.2-2.8M tokens/s, before per-forward overheads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lm_eval_ext.backend.work import TokenCount
from lm_eval_ext.plan.facts import ModelFacts

SOURCES = ("measured", "history", "paper")


@dataclass(frozen=True)
class Rates:
    """One request type's speed on one replica."""

    source: str
    prefill_tokens_per_s: float
    decode_tokens_per_s: float | None = None
    """generation only; None prices decode tokens at the prefill rate"""
    spread: tuple[float, float] = (0.8, 1.25)
    task_seconds_per_token: Mapping[str, float] = field(default_factory=dict)
    """history: a task's own seconds per computed token in the remembered run (wins over the rates)"""
    note: str = ""


@dataclass(frozen=True)
class TaskEstimate:
    request_type: str
    seconds: float
    seconds_low: float
    seconds_high: float
    source: str
    peak_memory_bytes: int = 0


def estimate_seconds(task: str, count: TokenCount, rates: Rates, *, num_replicas: int = 1,
                     request_type: str = "", peak_memory_bytes: int = 0) -> TaskEstimate:
    """Seconds for one task's work of one request type (see the module docstring)."""
    n = max(1, num_replicas)
    prefill = (count.prefill_tokens + (n - 1) * count.shared_prefix_tokens) / n
    decode = count.decode_tokens / n
    decode_high = (count.computed_high_tokens - count.prefill_tokens) / n
    per_token = rates.task_seconds_per_token.get(task)
    if per_token is not None:  # the remembered run of this very task
        def time(decoded: float) -> float:
            return (prefill + decoded) * per_token
    else:
        decode_rate = rates.decode_tokens_per_s or rates.prefill_tokens_per_s

        def time(decoded: float) -> float:
            return prefill / rates.prefill_tokens_per_s + decoded / decode_rate
    low, high = rates.spread
    return TaskEstimate(request_type, time(decode), time(0.0) * low, time(decode_high) * high, rates.source,
                        peak_memory_bytes)


# ---- paper -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Peak:
    """One accelerator's dense 16-bit peak and memory bandwidth (vendor figures)."""

    name: str
    flops_per_s: float
    bytes_per_s: float


#: a few GPUs by the names torch reports (first match wins), vendor dense bf16/fp16 peaks
GPU_PEAKS: tuple[tuple[str, Peak], ...] = (
    ("H200", Peak("H200", 989e12, 4.8e12)),
    ("H100 PCIe", Peak("H100 PCIe", 756e12, 2.0e12)),
    ("H100", Peak("H100 SXM", 989e12, 3.35e12)),
    ("B200", Peak("B200", 2250e12, 8.0e12)),
    ("A100", Peak("A100", 312e12, 2.0e12)),
    ("L40S", Peak("L40S", 362e12, 0.86e12)),
    ("A10", Peak("A10", 125e12, 0.6e12)),
    ("L4", Peak("L4", 121e12, 0.3e12)),
    ("4090", Peak("RTX 4090", 165e12, 1.0e12)),
    ("V100", Peak("V100", 125e12, 0.9e12)),
    ("T4", Peak("T4", 65e12, 0.32e12)),
    ("MI300", Peak("MI300X", 1307e12, 5.3e12)),
)
#: a described GPU has only a memory size: the usual card of that size (the output names it)
GPU_BY_MEMORY_GIB: tuple[tuple[float, str], ...] = (
    (16, "T4"), (24, "A10"), (32, "V100"), (40, "A100"), (48, "L40S"), (80, "H100"), (141, "H200"), (192, "B200"),
)
#: share of the peak a forward reaches: eager transformers on GPUs, and this CPU's measured matmul
PREFILL_EFFICIENCY = {"gpu": (0.25, 0.6), "cpu": (0.5, 0.9)}
#: share of the memory bandwidth a decode step reaches while it streams the weights and KV cache
DECODE_BANDWIDTH_EFFICIENCY = {"gpu": (0.4, 0.8), "cpu": (0.5, 0.9)}
#: kernel launches and Python per layer of one forward (eager; dominates small models' decode steps)
FORWARD_OVERHEAD_S_PER_LAYER = {"gpu": 1.5e-4, "cpu": 5e-5}


def gpu_peak(name: str, total_bytes: int) -> Peak:
    """The table's entry for a GPU name (``NVIDIA H100 80GB HBM3``), else the usual card of its memory."""
    for key, peak in GPU_PEAKS:
        if key.lower() in name.lower():
            return peak
    gib = total_bytes / 2**30
    size_key = min(GPU_BY_MEMORY_GIB, key=lambda entry: abs(entry[0] - gib))[1]
    return next(peak for key, peak in GPU_PEAKS if key == size_key)


def flops_per_token(facts: ModelFacts, *, context_tokens: float, scored_fraction: float = 1.0) -> float:
    """Forward FLOPs of one token: 2 per matrix parameter, attention over ``context_tokens``
    (scores and values: 4 x layers x heads x head_dim x context), the LM head at scored positions."""
    matrices = 2.0 * facts.params.num_matrix_params
    attention = 4.0 * facts.num_layers * facts.num_attention_heads * facts.head_dim * context_tokens
    head = 2.0 * facts.hidden_size * facts.vocab_size * scored_fraction
    return matrices + attention + head


def paper_rates(facts: ModelFacts, peak: Peak, *, kind: str, request_type: str, context_tokens: float,
                scored_fraction: float, decode_rows: int = 1, gpus_per_replica: int = 1) -> Rates:
    """Rates from FLOPs and bytes: prefill at ``PREFILL_EFFICIENCY`` of the peak, a decode step of
    ``decode_rows`` rows bound by streaming weights and KV (or by its FLOPs) plus per-layer overhead.
    ``kind``: ``gpu`` or ``cpu``. Central values use the middle of each efficiency range."""
    eff_low, eff_high = PREFILL_EFFICIENCY[kind]
    flops = flops_per_token(facts, context_tokens=context_tokens, scored_fraction=scored_fraction)
    peak_flops = peak.flops_per_s * gpus_per_replica
    prefill = peak_flops * (eff_low + eff_high) / 2 / flops
    decode = None
    if request_type == "generate_until":
        bw_low, bw_high = DECODE_BANDWIDTH_EFFICIENCY[kind]
        rows = max(1, decode_rows)
        stream = facts.weights_bytes + rows * context_tokens * facts.kv_bytes_per_token
        step_flops = rows * flops_per_token(facts, context_tokens=context_tokens)
        step_s = max(stream / (peak.bytes_per_s * gpus_per_replica * (bw_low + bw_high) / 2),
                     step_flops / (peak_flops * (eff_low + eff_high) / 2))
        step_s += facts.num_layers * FORWARD_OVERHEAD_S_PER_LAYER[kind]
        decode = rows / step_s
    middle = (eff_low + eff_high) / 2
    flops_text = (f"{peak.flops_per_s / 1e12:.0f} TFLOP/s" if peak.flops_per_s >= 1e13
                  else f"{peak.flops_per_s / 1e9:.0f} GFLOP/s")
    note = f"{peak.name}: {flops_text}, {peak.bytes_per_s / 1e9:.0f} GB/s; efficiency {eff_low:.2f}-{eff_high:.2f}"
    return Rates("paper", prefill, decode, spread=(middle / eff_high, middle / eff_low), note=note)


# ---- a continuous loop's decode, step by step ---------------------------------------------------

def continuous_decode_seconds(lengths: Sequence[float], rows: int, *, step_s: float, row_s: float) -> float:
    """Seconds of the decode a continuous loop of ``rows`` slots spends on requests that generate
    ``lengths`` tokens each, in order (``hf/compute/continuous.py``). The first token comes from
    the prompt's prefill, in the step where the prompt joins (one per step while a slot is free)
    beside the live rows' decode; each further token is one decode step. A decode-only step costs
    ``step_s`` for its first row and ``row_s`` for each further row; beside a prefill the rows add
    ``row_s`` each (the prefill's forward carries the fixed cost, priced with the prompt tokens).
    A call's last rows decode alone, so few requests or uneven lengths cost more steps than
    ``sum(lengths) / rows``.

    >>> continuous_decode_seconds([5, 5, 5, 5], 4, step_s=1.0, row_s=0.5)  # joins staggered
    10.0
    >>> continuous_decode_seconds([3, 9], 2, step_s=1.0, row_s=0.5)  # the long row's tail alone
    9.0
    """
    waiting = deque(max(0, round(n) - 1) for n in lengths)  # decode steps each request needs
    live: list[int] = []
    seconds = 0.0
    while waiting or live:
        joining = waiting.popleft() if waiting and len(live) < max(1, rows) else None
        if live:
            fixed = 0.0 if joining is not None else step_s - row_s
            seconds += fixed + row_s * len(live)
            live = [n - 1 for n in live if n > 1]
        if joining:
            live.append(joining)
    return seconds
