"""EDGE (torch): out-of-memory as an answer, not a crash; one retry loop for scoring and generation.

:func:`drain` runs a queue of batches. When a batch raises an out-of-memory error, the caller's
``on_oom`` splits it (and may re-pack what is left); the parts go back to the front of the queue.
A batch that cannot be split any further re-raises the original error, so nothing is ever dropped
silently. Results therefore do not depend on where the memory ran out: the same requests are
computed, in smaller batches.
"""

from __future__ import annotations

import gc
import resource
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import torch

B = TypeVar("B")


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peaks() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def device_peaks_bytes() -> dict[str, int]:
    """Peak memory per device since the last reset: CUDA allocator peaks, process peak RSS."""
    peaks = {"cpu_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            peaks[f"cuda:{i}"] = int(torch.cuda.max_memory_allocated(i))
    return peaks


def drain(queue: deque[B], run: Callable[[B], Any], *,
          on_oom: Callable[[B, deque[B], BaseException], None],
          on_done: Callable[[B, Any, float], None]) -> int:
    """Run every batch of ``queue``; returns how many out-of-memory errors were recovered.

    ``on_oom(batch, queue, exc)`` must put the failed batch's requests back into ``queue`` in
    smaller batches, or raise (``exc`` when the batch cannot be split). ``on_done(batch, result,
    wall_s)`` receives each finished batch. Any other exception propagates unchanged.
    """
    num_ooms = 0
    while queue:
        batch = queue.popleft()
        start_s = time.perf_counter()
        try:
            result = run(batch)
        except Exception as exc:  # noqa: BLE001 (only OOMs are answers; others re-raise)
            if not is_out_of_memory(exc):
                raise
            num_ooms += 1
            free_memory()
            on_oom(batch, queue, exc)
            continue
        on_done(batch, result, time.perf_counter() - start_s)
    return num_ooms
