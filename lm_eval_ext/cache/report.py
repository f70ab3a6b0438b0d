"""PURE: request-cache figures for the cost report (``results["config"]["request_cache"]``).

Per task and request type: ``hits``, ``misses`` (computed this run), ``not_cacheable`` (sampled
without a seed, or arguments JSON cannot carry; included in misses), ``saved_s`` (estimated: the
compute time recorded with each hit entry when it was first computed) and ``computed_s`` (this
run's wall time for the misses, shared out by request count).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

_COUNTERS = ("hits", "misses", "not_cacheable")


def _zero() -> dict[str, float]:
    return {"hits": 0, "misses": 0, "not_cacheable": 0, "saved_s": 0.0, "computed_s": 0.0}


@dataclass
class CacheStats:
    """``{task: {request_type: counters}}``; tasks are read from each Instance's ``task_name``."""

    by_task: dict[str, dict[str, dict[str, float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(_zero))
    )

    def _slot(self, request: Any, request_type: str) -> dict[str, float]:
        return self.by_task[getattr(request, "task_name", None) or "unknown"][request_type]

    def add_hit(self, request: Any, request_type: str, compute_s: float) -> None:
        slot = self._slot(request, request_type)
        slot["hits"] += 1
        slot["saved_s"] += compute_s

    def add_miss(self, request: Any, request_type: str, *, cacheable: bool) -> None:
        slot = self._slot(request, request_type)
        slot["misses"] += 1
        slot["not_cacheable"] += 0 if cacheable else 1

    def add_computed(self, requests: list, request_type: str, wall_s: float) -> None:
        for request in requests:
            self._slot(request, request_type)["computed_s"] += wall_s / len(requests)


def build_report(stats: CacheStats, *, mode: str, path: str, fingerprint: str | None, rank: int, world_size: int) -> dict:
    """Plain JSON-able dict; counts are of this process's requests (``scope`` says which)."""
    tasks = {
        task: {rtype: _rounded(counters) for rtype, counters in types.items()}
        for task, types in sorted(stats.by_task.items())
    }
    totals = _zero()
    for types in stats.by_task.values():
        for counters in types.values():
            for name, value in counters.items():
                totals[name] += value
    looked_up = totals["hits"] + totals["misses"]
    totals = _rounded(totals)
    totals["hit_rate"] = round(totals["hits"] / looked_up, 4) if looked_up else None
    return {
        "mode": mode,
        "cache_dir": path,
        "model_fingerprint": fingerprint,
        "scope": f"rank {rank} of {world_size}",
        "tasks": tasks,
        "totals": totals,
    }


def _rounded(counters: dict[str, float]) -> dict[str, float]:
    return {k: (int(v) if k in _COUNTERS else round(v, 3)) for k, v in counters.items()}
