"""PURE: repetition statistics and the speedup verdict.

A ratio is called a speedup (or a slowdown) only when the two sets of repetitions do not overlap:
the candidate's worst time beats the baseline's best. Anything else is "within noise", whatever
the ratio of medians says.

Example: baseline times [10.0, 10.4, 11.0] s, candidate [4.9, 5.0, 5.6] s -> median speedup
10.4 / 5.0 = 2.08x, and 5.6 < 10.0, so the verdict is "faster".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import median

FASTER = "faster"
SLOWER = "slower"
WITHIN_NOISE = "within noise"
NO_DATA = "no data"


@dataclass(frozen=True)
class Spread:
    """Summary of repeated measurements of one quantity (seconds, usually)."""

    median: float
    min: float
    max: float
    count: int

    @property
    def relative_spread(self) -> float:
        """(max - min) / median: 0.1 means the repetitions span 10 % of the median."""
        return (self.max - self.min) / self.median if self.median else 0.0

    def as_dict(self) -> dict:
        return asdict(self) | {"relative_spread": self.relative_spread}


def summarize(values: list[float]) -> Spread | None:
    """Median, min and max of ``values``; ``None`` when there are none."""
    if not values:
        return None
    return Spread(median=float(median(values)), min=float(min(values)), max=float(max(values)), count=len(values))


def speedup_verdict(baseline_s: list[float], candidate_s: list[float]) -> dict:
    """Compare two sets of wall times (lower is better).

    Returns ``speedup`` (baseline median / candidate median), its optimistic and pessimistic
    bounds from the extremes, and ``verdict``: ``faster`` when the candidate's worst time is below
    the baseline's best, ``slower`` when its best is above the baseline's worst, else
    ``within noise``.
    """
    base, cand = summarize(baseline_s), summarize(candidate_s)
    if base is None or cand is None or cand.median <= 0 or cand.min <= 0 or cand.max <= 0:
        return {"speedup": None, "speedup_low": None, "speedup_high": None, "verdict": NO_DATA}
    if cand.max < base.min:
        verdict = FASTER
    elif cand.min > base.max:
        verdict = SLOWER
    else:
        verdict = WITHIN_NOISE
    return {
        "speedup": base.median / cand.median,
        "speedup_low": base.min / cand.max,
        "speedup_high": base.max / cand.min,
        "verdict": verdict,
    }


def scaling_efficiency(single_s: float | None, parallel_s: float | None, num_processes: int) -> float | None:
    """Speedup per process: ``single_s / (num_processes * parallel_s)``; 1.0 is perfect scaling."""
    if not single_s or not parallel_s or num_processes < 1:
        return None
    return single_s / (num_processes * parallel_s)


def interleaved_order(labels: list[str], repetitions: int) -> list[tuple[int, str]]:
    """Run order for repeated measurements, so that drift hits every label alike.

    Odd repetitions reverse the order (A B, B A, A B, ...): a slow start or a machine that heats up
    is shared instead of landing on one side. Returns ``(repetition, label)`` pairs.
    """
    order = []
    for rep in range(repetitions):
        sequence = labels if rep % 2 == 0 else list(reversed(labels))
        order.extend((rep, label) for label in sequence)
    return order
