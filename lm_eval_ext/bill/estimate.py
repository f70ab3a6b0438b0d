"""EDGE: ``lm-eval-ext plan --tasks``: every task's requests, tokens, time and memory on the planned layout.

The steps, each in its own module: lm-eval builds the requests (:mod:`~lm_eval_ext.bill.workload`);
the backend's model without weights tokenises and counts them, and names the model for the history
(:mod:`~lm_eval_ext.bill.count`); the rates come from ``--measure`` (:mod:`~lm_eval_ext.bill.measure`),
else this model's history on this hardware (:mod:`~lm_eval_ext.estimate.history`), else paper
(:func:`~lm_eval_ext.estimate.time_model.paper_rates`: the planned GPUs' peaks, or this CPU's measured
matmul); :func:`~lm_eval_ext.estimate.time_model.estimate_seconds` prices each task on the plan's
replicas. With a time limit the bill says whether the run fits and, if not, what would.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from lm_eval_ext.estimate import history
from lm_eval_ext.bill.count import CountedWork, WorkCounter
from lm_eval_ext.estimate.ledger import rates_from_history
from lm_eval_ext.estimate.time_model import Rates, TaskEstimate, estimate_seconds, gpu_peak, paper_rates
from lm_eval_ext.bill.workload import record_workload, task_manager
from lm_eval_ext.hf.policy.token_budget import cpu_budget_tokens
from lm_eval_ext.backend.work import TokenCount
from lm_eval_ext.plan.facts import ModelFacts
from lm_eval_ext.plan.hardware import Gpu, Hardware
from lm_eval_ext.plan.token_bytes import bytes_per_token
from lm_eval_ext.plan.types import Plan
from lm_eval_ext.units import format_duration

logger = logging.getLogger(__name__)

#: replica counts tried when a run does not fit its time limit
REPLICA_STEPS = (2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class BillRequest:
    tasks: tuple[str, ...]
    limit: int | float | None = None
    num_fewshot: int | None = None
    fewshot_seed: int | None = None
    include_paths: tuple[str, ...] = ()
    measure: bool = False
    time_limit_s: float | None = None
    activation_tokens: int = 4096


def make_bill(request: BillRequest, *, model_args: Mapping[str, str], facts: ModelFacts, hardware: Hardware,
              plan: Plan) -> dict[str, Any]:
    """The ``estimate`` object of ``plan --json`` (see docs/planner.md for its fields)."""
    manager = task_manager(request.tasks, request.include_paths)  # unknown names, then no tokenizer: one line each
    counter = WorkCounter(plan.backend, model_args, dtype=plan.dtype, hardware=hardware)
    workload = record_workload(request.tasks, limit=request.limit, num_fewshot=request.num_fewshot,
                               fewshot_seed=request.fewshot_seed, manager=manager)
    key, remembered = _history(counter, hardware, plan)
    generated = {task: kinds["generate_until"]["generated_per_request"]
                 for task, kinds in (remembered or {}).get("tasks", {}).items()
                 if kinds.get("generate_until", {}).get("generated_per_request")}
    counted = counter.count(workload, generated)
    sources = {"paper": {kind: _paper_rates(facts, hardware, plan, kind, counted) for kind in workload.calls}}
    if remembered is not None:
        sources["history"] = {kind: rates_from_history(remembered, kind) or sources["paper"][kind]
                              for kind in workload.calls}
    if request.measure:
        from lm_eval_ext.bill.measure import measure_rates

        measured, lengths = measure_rates(counter, counted)
        sources["measured"] = {**sources["paper"], **measured}
        if set(lengths) - set(generated):  # the model's own lengths on tasks the history has not seen
            counted = counter.count(workload, {**lengths, **generated})
    chosen = sources.get("measured") or sources.get("history") or sources["paper"]
    priced = _price(counted, chosen, plan, facts, hardware, request.activation_tokens)
    bill = _bill_json(counted, priced, chosen, plan)
    bill["by_source"] = {source: _total(_price(counted, rates, plan, facts, hardware, request.activation_tokens))
                         for source, rates in sources.items()}  # the total each source gives
    bill["history_key"] = key
    if request.time_limit_s is not None:
        bill.update(_time_limit(request.time_limit_s, sum(p.seconds for p in priced.values()),
                                sum(p.seconds_high for p in priced.values()), counted, chosen, facts, hardware, plan))
    return bill


def _history(counter: WorkCounter, hardware: Hardware, plan: Plan) -> tuple[str | None, dict | None]:
    """This model's newest record on this machine; a described machine (``--gpus``) has none."""
    fingerprint = counter.fingerprint
    if fingerprint is None or hardware.described:
        return None, None
    key = history.record_key(fingerprint, history.hardware_key(history.hardware_description(plan.device)),
                             plan.backend, plan.num_replicas)
    return key, history.latest(key)


def _paper_rates(facts: ModelFacts, hardware: Hardware, plan: Plan, kind: str, counted: CountedWork) -> Rates:
    total = TokenCount()
    for (_, request_type), count in counted.counts.items():
        if request_type == kind:
            total.add(count)
    requests = max(1, total.num_requests)
    if kind == "generate_until":
        context = (total.context_tokens + total.generated_tokens / 2) / requests
        scored = 1.0 / max(1.0, total.context_tokens / requests)
    else:
        context = total.computed_tokens / requests / 2
        scored = total.continuation_tokens / max(1.0, total.computed_tokens)
    if plan.device == "cuda" and hardware.gpus:
        peak = gpu_peak(hardware.gpus[0].name, hardware.gpus[0].total_bytes)
        on, per_replica = "gpu", max(1, plan.gpus_per_replica)
    else:
        from lm_eval_ext.bill.measure import cpu_peak

        peak = cpu_peak(history.hardware_key(history.hardware_description("cpu")), facts.dtype)
        on, per_replica = "cpu", 1
    rows = _decode_rows(facts, hardware, plan, total) if kind == "generate_until" else 1
    return paper_rates(facts, peak, kind=on, request_type=kind, context_tokens=max(1.0, context),
                       scored_fraction=min(1.0, scored), decode_rows=rows, gpus_per_replica=per_replica)


def _decode_rows(facts: ModelFacts, hardware: Hardware, plan: Plan, total: TokenCount) -> int:
    """Rows the generation budget holds: each row keeps ``prompt + max_new_tokens`` of KV."""
    requests = max(1, total.num_requests)
    width = (total.context_tokens + total.generation_budget_tokens) / requests
    if plan.device == "cuda":
        budget_tokens = plan.headroom_bytes // max(1, facts.kv_bytes_per_token)
    else:
        token_bytes = bytes_per_token(facts, scored_fraction=1.0 / max(1.0, width), holds_kv=True)
        budget_tokens = cpu_budget_tokens(hardware.cpu_ram_bytes, token_bytes, "generate_until")
    return max(1, min(requests, int(budget_tokens // max(1.0, width))))


def peak_memory_bytes(facts: ModelFacts, hardware: Hardware, plan: Plan, kind: str, count: TokenCount,
                      activation_tokens: int) -> int:
    """One process's peak: its share of the weights plus one batch of tokens in flight (CPU: the
    budget the RAM gives, as ``hf_ext`` sizes it; GPU: the planner's activation tokens; vLLM on
    GPUs takes ``gpu_memory_utilization`` of each card up front)."""
    if plan.backend == "vllm" and plan.device == "cuda" and hardware.gpus:
        return int((plan.gpu_memory_utilization or 0.9) * hardware.gpus[0].total_bytes)
    requests = max(1, count.num_requests)
    generating = kind == "generate_until"
    scored = (1.0 / max(1.0, count.context_tokens / requests) if generating
              else count.continuation_tokens / max(1.0, count.computed_tokens))
    row = (count.computed_tokens / requests) if not generating else 0
    token_bytes = bytes_per_token(facts, scored_fraction=min(1.0, scored), attention_row_tokens=int(row),
                                  holds_kv=generating)
    if plan.device == "cuda":
        tokens = activation_tokens
        weights = plan.weights_bytes // max(1, plan.gpus_per_replica)
    else:
        tokens = cpu_budget_tokens(hardware.cpu_ram_bytes, token_bytes, kind)
        weights = plan.weights_bytes
    return int(weights + tokens * token_bytes)


def _price(counted: CountedWork, rates: Mapping[str, Rates], plan: Plan, facts: ModelFacts, hardware: Hardware,
           activation_tokens: int) -> dict[tuple[str, str], TaskEstimate]:
    return {(task, kind): estimate_seconds(
                task, count, rates[kind], num_replicas=plan.num_replicas, request_type=kind,
                peak_memory_bytes=peak_memory_bytes(facts, hardware, plan, kind, count, activation_tokens))
            for (task, kind), count in counted.counts.items()}


def _total(priced: Mapping[tuple[str, str], TaskEstimate]) -> float:
    return round(sum(p.seconds for p in priced.values()), 2)


def _bill_json(counted: CountedWork, priced: Mapping[tuple[str, str], TaskEstimate], rates: Mapping[str, Rates],
               plan: Plan) -> dict[str, Any]:
    tasks: dict[str, dict[str, Any]] = {}
    by_task: dict[str, list[tuple[str, TokenCount, TaskEstimate]]] = defaultdict(list)
    for (task, kind), count in sorted(counted.counts.items()):
        by_task[task].append((kind, count, priced[(task, kind)]))
    for task, parts in by_task.items():
        total = TokenCount()
        for _, count, _ in parts:
            total.add(count)
        tasks[task] = {
            "requests": total.num_requests,
            "documents": counted.num_documents.get(task, 0),
            "computed_tokens": round(total.computed_tokens),
            "computed_tokens_low": round(total.computed_low_tokens),
            "computed_tokens_high": round(total.computed_high_tokens),
            "stock_tokens": round(total.stock_tokens),
            "seconds": round(sum(p.seconds for _, _, p in parts), 3),
            "seconds_low": round(sum(p.seconds_low for _, _, p in parts), 3),
            "seconds_high": round(sum(p.seconds_high for _, _, p in parts), 3),
            "source": "+".join(sorted({p.source for _, _, p in parts})),
            "peak_memory_bytes": max(p.peak_memory_bytes for _, _, p in parts),
            "cache_hits": sum(counted.cache_hits.get((task, kind), 0) for kind, _, _ in parts),
            "request_types": {kind: count.as_dict() for kind, count, _ in parts},
        }
    return {
        "tasks": tasks,
        "total_seconds": round(sum(t["seconds"] for t in tasks.values()), 2),
        "total_seconds_low": round(sum(t["seconds_low"] for t in tasks.values()), 2),
        "total_seconds_high": round(sum(t["seconds_high"] for t in tasks.values()), 2),
        "rates": {kind: {"source": r.source, "prefill_tokens_per_s": round(r.prefill_tokens_per_s, 1),
                         "decode_tokens_per_s": None if r.decode_tokens_per_s is None
                         else round(r.decode_tokens_per_s, 1), "spread": list(r.spread), "note": r.note}
                  for kind, r in rates.items()},
        "num_replicas": plan.num_replicas,
    }


def _time_limit(limit_s: float, total_s: float, total_high_s: float, counted: CountedWork,
                rates: Mapping[str, Rates], facts: ModelFacts, hardware: Hardware, plan: Plan) -> dict[str, Any]:
    verdict = "fits" if total_high_s <= limit_s else "fits if the estimate holds" if total_s <= limit_s \
        else "does not fit"
    out: dict[str, Any] = {"time_limit_s": limit_s, "fits": total_s <= limit_s, "verdict": verdict, "suggestions": []}
    if total_s <= limit_s:
        return out
    out["suggestions"] = suggest_layouts(limit_s, counted, rates, facts, hardware, plan)
    return out


def _seconds_on(counted: CountedWork, rates: Mapping[str, Rates], num_replicas: int) -> float:
    return sum(estimate_seconds(task, count, rates[kind], num_replicas=num_replicas).seconds
               for (task, kind), count in counted.counts.items())


def suggest_layouts(limit_s: float, counted: CountedWork, rates: Mapping[str, Rates], facts: ModelFacts,
                    hardware: Hardware, plan: Plan) -> list[str]:
    """More replicas of the planned kind on GPUs; from a CPU, GPUs on paper (data parallel)."""
    if plan.device == "cuda" and hardware.gpus:
        size = hardware.gpus[0].total_bytes
        found = _fewest_replicas(lambda n: _seconds_on(counted, rates, n), limit_s, plan.num_replicas)
        if found is None:
            return ["no data-parallel layout up to 64 replicas fits; split the tasks over several jobs "
                    "(the request cache resumes a run that was stopped)"]
        replicas, seconds = found
        gpus = replicas * max(1, plan.gpus_per_replica)
        return [f"data parallel over {replicas} replicas ({gpus} GPUs of {size / 2**30:.0f} GiB, "
                f"--gpus {gpus}x{size / 2**30:.0f}GiB): about {format_duration(seconds)}"]
    suggestions = []
    for gib in (80, 141):
        card = Gpu("GPU", gib * 2**30, gib * 2**30)
        gpu = Hardware(gpus=(card,), cpu_ram_bytes=hardware.cpu_ram_bytes, described=True)
        on_one = replace(plan, device="cuda", gpus_per_replica=1, num_replicas=1)
        paper = {kind: _paper_rates(facts, gpu, on_one, kind, counted) for kind in rates}
        found = _fewest_replicas(lambda n: _seconds_on(counted, paper, n), limit_s, 1)
        if found is not None:
            replicas, seconds = found
            suggestions.append(f"{replicas} x {gib} GiB GPU ({gpu_peak(card.name, card.total_bytes).name}, "
                               f"--gpus {replicas}x{gib}GiB): about {format_duration(seconds)} on paper")
    return suggestions or ["no GPU layout up to 64 cards fits on paper; split the tasks over several jobs"]


def _fewest_replicas(seconds_with: Callable[[int], float], limit_s: float, start: int) -> tuple[int, float] | None:
    for replicas in (start, *(start * step for step in REPLICA_STEPS)):
        seconds = seconds_with(replicas)
        if seconds <= limit_s:
            return replicas, seconds
    return None
