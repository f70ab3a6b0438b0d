"""PURE: the cost report: what each task and request type cost, for every backend, attached to lm-eval's results.

One :class:`CostEntry` per (task, request type). Every backend counts requests, wall time and the
tokens it computed. ``hf_ext`` adds what its batches cost (useful and padded tokens, the token budget,
out-of-memory retries, peak memory); ``vllm_ext`` adds what vLLM's prefix cache saved: the prompt
tokens stock would compute (stock scores every choice from scratch), the tokens vLLM read from its
cache (``num_cached_tokens``), the fewest tokens any scorer can compute at this KV block size
(``minimal_tokens``: every distinct whole block once, every request from its last reusable block
boundary on), the extra requests it sent (warm-ups, probes), the requests scored again the stock way
by cause, and wall time by phase. ``token_bound`` = stock tokens / minimal tokens is the speedup that
computing fewer tokens can give at this block size; ``bound_reached`` = minimal / computed says how
much of it this run got, in tokens.

Example (ARC-Easy 5-shot, examples per document, 32-token blocks): 4 choices of a 181-token context
with 4-token answers. Stock computes 4 x 185 = 740 prompt tokens; at least 160 (5 whole blocks, once)
+ 4 x 25 (each choice from token 160 on) = 260 must be computed, so the bound is 740 / 260 = 2.85x.

Engine calls mix tasks, so their wall time is apportioned to tasks by a weight per task (hf: useful
tokens; vLLM: computed tokens); request and token counts per task are exact, and so are hf's
computed tokens, which its engine attributes itself (``computed_by_task``: its rows and prefixes, as
``token_count`` counts them). Each entry also carries the estimate the run started from
(``estimated_*``, see :mod:`lm_eval_ext.estimate.ledger`), next to what it measured.
Reached through each adapter's ``get_model_info()["cost_report"]``, which lm-eval copies into
``results["config"]`` after evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

#: the package's loggers write through lm-eval's handlers (``logs.share_lm_eval_handlers``), so the
#: table shows up next to lm-eval's own output at lm-eval's verbosity
logger = logging.getLogger(__name__)

#: keys of :meth:`CostEntry.as_dict` that are derived from the fields (not accepted back)
DERIVED_KEYS = ("padding_fraction", "token_bound", "bound_reached", "fallback_requests", "tokens_per_s",
                "mean_live_rows")


@dataclass
class CostEntry:
    task: str
    request_type: str
    num_requests: int = 0
    wall_s: float = 0.0
    tokens_computed: float = 0.0
    """Tokens the engine computed (vLLM: prompt tokens not read from its cache, extra requests included)."""
    useful_tokens: int = 0
    """Tokens an unshared, unpadded layout computes for these requests (every token of each request;
    generation: prompts and generated tokens)."""
    padded_tokens: float = 0.0
    budget_tokens: int | None = None
    oom_retries: int = 0
    peak_memory_bytes: dict[str, int] = field(default_factory=dict)
    stock_tokens: int = 0
    """Prompt tokens stock lm-eval would compute for these requests (vLLM)."""
    cached_tokens: int = 0
    """Prompt tokens the engine read from its prefix cache instead of computing (vLLM)."""
    minimal_tokens: int = 0
    """Prompt tokens any scorer must compute at this KV block size (vLLM; see the module docstring)."""
    block_size: int | None = None
    warmup_requests: int = 0
    warmup_tokens: int = 0
    probe_requests: int = 0
    probe_tokens: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)
    """Requests scored again (or from the start) without the prefix cache, by cause."""
    phase_wall_s: dict[str, float] = field(default_factory=dict)
    #: generation (hf): prompt tokens prefilled (shared prefixes once), tokens decoded, and the decode
    #: steps with the rows live in them (live rows on average = live_row_steps / decode_steps)
    prefill_tokens: float = 0.0
    decode_tokens: float = 0.0
    decode_steps: int = 0
    live_row_steps: int = 0
    estimated_tokens: float | None = None
    estimated_s: float | None = None
    estimate_source: str | None = None

    @property
    def mean_live_rows(self) -> float:
        return self.live_row_steps / self.decode_steps if self.decode_steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_computed / self.wall_s if self.wall_s else 0.0

    @property
    def padding_fraction(self) -> float:
        return 0.0 if not self.padded_tokens else 1.0 - self.tokens_computed / self.padded_tokens

    @property
    def token_bound(self) -> float | None:
        """Stock tokens / minimal tokens: the speedup fewer computed tokens can give at this block size."""
        return self.stock_tokens / self.minimal_tokens if self.minimal_tokens else None

    @property
    def bound_reached(self) -> float | None:
        """Minimal / computed tokens: 1.0 when nothing beyond the minimum was computed."""
        return self.minimal_tokens / self.tokens_computed if self.minimal_tokens and self.tokens_computed else None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["tokens_computed"] = round(self.tokens_computed)
        out["padded_tokens"] = round(self.padded_tokens)
        out["wall_s"] = round(self.wall_s, 4)
        out["phase_wall_s"] = {phase: round(s, 4) for phase, s in self.phase_wall_s.items()}
        out["padding_fraction"] = round(self.padding_fraction, 4)
        out["token_bound"] = None if self.token_bound is None else round(self.token_bound, 4)
        out["bound_reached"] = None if self.bound_reached is None else round(self.bound_reached, 4)
        out["fallback_requests"] = sum(self.fallbacks.values())
        out["tokens_per_s"] = round(self.tokens_per_s, 1)
        for key in ("estimated_tokens", "estimated_s"):
            out[key] = None if out[key] is None else round(out[key], 2)
        if self.decode_steps:
            out["prefill_tokens"], out["decode_tokens"] = round(self.prefill_tokens), round(self.decode_tokens)
            out["mean_live_rows"] = round(self.mean_live_rows, 2)
        else:
            for name in ("prefill_tokens", "decode_tokens", "decode_steps", "live_row_steps"):
                del out[name]
        return out

    @classmethod
    def from_dict(cls, row: Mapping) -> CostEntry:
        """An entry back from :meth:`as_dict` (derived keys dropped, unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names and k not in DERIVED_KEYS})


def _apportioned(total: float, weights: Mapping[str, float]) -> dict[str, float]:
    """``total`` split over the keys of ``weights`` in proportion (evenly when they are all 0)."""
    whole = sum(weights.values())
    if not whole:
        return {key: total / len(weights) for key in weights} if weights else {}
    return {key: total * weight / whole for key, weight in weights.items()}


class CostReport:
    """Accumulates :class:`CostEntry` rows keyed by (task, request type)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], CostEntry] = {}

    def entry(self, task: str, request_type: str) -> CostEntry:
        key = (task, request_type)
        if key not in self.entries:
            self.entries[key] = CostEntry(task, request_type)
        return self.entries[key]

    def add_batch(
        self,
        request_type: str,
        useful_by_task: Mapping[str, int],
        *,
        wall_s: float,
        computed_tokens: int,
        padded_tokens: int,
        requests_by_task: Mapping[str, int],
        computed_by_task: Mapping[str, float] | None = None,
    ) -> None:
        """Apportion one batch's cost to its tasks by their share of its useful tokens
        (computed tokens as ``computed_by_task`` says, when given)."""
        total_useful = sum(useful_by_task.values()) or 1
        for task, useful in useful_by_task.items():
            share = useful / total_useful
            entry = self.entry(task, request_type)
            entry.num_requests += requests_by_task.get(task, 0)
            entry.useful_tokens += useful
            entry.wall_s += wall_s * share
            if computed_by_task is None:
                entry.tokens_computed += computed_tokens * share
                entry.padded_tokens += padded_tokens * share
            else:  # the padding (never negative) by useful tokens, on top of the task's own computed tokens
                entry.tokens_computed += computed_by_task.get(task, 0.0)
                entry.padded_tokens += computed_by_task.get(task, 0.0) + (padded_tokens - computed_tokens) * share

    def set_estimate(self, task: str, request_type: str, *, tokens: float, seconds: float | None,
                     source: str | None) -> None:
        """The estimate this (task, request type) started from."""
        entry = self.entry(task, request_type)
        entry.estimated_tokens, entry.estimated_s, entry.estimate_source = tokens, seconds, source

    def add_generation(self, task: str, request_type: str, *, num_requests: int, useful_tokens: int,
                       computed_tokens: float, wall_s: float, prefill_tokens: float, decode_tokens: float,
                       decode_steps: int, live_row_steps: int) -> None:
        """One task's share of a continuous generation call (the loop's steps are shared by its tasks)."""
        entry = self.entry(task, request_type)
        entry.num_requests += num_requests
        entry.useful_tokens += useful_tokens
        entry.tokens_computed += computed_tokens
        entry.padded_tokens += computed_tokens
        entry.wall_s += wall_s
        entry.prefill_tokens += prefill_tokens
        entry.decode_tokens += decode_tokens
        entry.decode_steps += decode_steps
        entry.live_row_steps += live_row_steps

    def finish_call(
        self, request_type: str, tasks: list[str], *, budget_tokens: int | None,
        oom_retries: int, peak_memory_bytes: Mapping[str, int],
    ) -> None:
        for task in tasks:
            entry = self.entry(task, request_type)
            entry.budget_tokens = budget_tokens
            entry.oom_retries += oom_retries
            for device, peak in peak_memory_bytes.items():
                entry.peak_memory_bytes[device] = max(entry.peak_memory_bytes.get(device, 0), peak)

    def count(self, task: str, request_type: str, **increments: int | float) -> None:
        """Add to numeric fields of one entry, e.g. ``count(t, k, num_requests=4, stock_tokens=740)``."""
        entry = self.entry(task, request_type)
        for name, value in increments.items():
            setattr(entry, name, getattr(entry, name) + value)

    def count_fallbacks(self, task: str, request_type: str, cause: str, num_requests: int = 1) -> None:
        fallbacks = self.entry(task, request_type).fallbacks
        fallbacks[cause] = fallbacks.get(cause, 0) + num_requests

    def add_phase(self, request_type: str, phase: str, wall_s: float, weight_by_task: Mapping[str, float]) -> None:
        """One engine call's wall time, apportioned to its tasks by ``weight_by_task`` (e.g. the
        tokens each computed in it), added to their ``wall_s`` and to ``phase_wall_s[phase]``."""
        for task, share_s in _apportioned(wall_s, weight_by_task).items():
            entry = self.entry(task, request_type)
            entry.wall_s += share_s
            entry.phase_wall_s[phase] = entry.phase_wall_s.get(phase, 0.0) + share_s

    def as_dict(self) -> dict:
        return {f"{task}/{kind}": e.as_dict() for (task, kind), e in sorted(self.entries.items())}

    def format_table(self) -> str:
        """One line per entry: the columns every backend has, then hf's batch columns and vLLM's
        prefix-cache columns and generation's prefill, decode and live-row columns where any entry uses them."""
        entries = [e for _, e in sorted(self.entries.items())]
        columns = list(_COMMON)
        if any(e.padded_tokens or e.budget_tokens is not None or e.peak_memory_bytes for e in entries):
            columns += _BATCHES
        if any(e.stock_tokens for e in entries):
            columns += _PREFIX_CACHE
        if any(e.decode_steps for e in entries):
            columns += _GENERATION
        lines = [" ".join(f"{title:{align}{width}}" for title, width, align, _ in columns)]
        for e in entries:
            lines.append(" ".join(f"{cell(e):{align}{width}}" for _, width, align, cell in columns))
        return "\n".join(lines)

    def log(self) -> None:
        if self.entries:
            logger.info("lm-eval-ext cost report\n%s", self.format_table())


def _ratio(value: float | None, suffix: str = "x") -> str:
    return "-" if value is None else f"{value:.2f}{suffix}"


def _causes(counts: Mapping[str, int]) -> str:
    return ",".join(f"{cause}:{n}" for cause, n in sorted(counts.items())) or "-"


def _phases(seconds: Mapping[str, float]) -> str:
    return ",".join(f"{phase}:{s:.1f}" for phase, s in seconds.items()) or "-"


#: (title, width, alignment, cell) per column of :meth:`CostReport.format_table`
_COMMON = [
    ("task", 22, "<", lambda e: e.task[:22]),
    ("request type", 22, "<", lambda e: e.request_type),
    ("reqs", 6, ">", lambda e: e.num_requests),
    ("wall_s", 8, ">", lambda e: f"{e.wall_s:.2f}"),
    ("computed", 9, ">", lambda e: round(e.tokens_computed)),
    ("useful", 9, ">", lambda e: e.useful_tokens),
    ("tok/s", 7, ">", lambda e: f"{e.tokens_per_s:.0f}"),
]
_BATCHES = [
    ("pad%", 6, ">", lambda e: f"{100 * e.padding_fraction:.1f}"),
    ("budget", 7, ">", lambda e: e.budget_tokens if e.budget_tokens is not None else "-"),
    ("ooms", 5, ">", lambda e: e.oom_retries),
    ("peak MiB", 9, ">", lambda e: f"{max(e.peak_memory_bytes.values(), default=0) / 2**20:.0f}"),
]
_PREFIX_CACHE = [
    ("stock", 9, ">", lambda e: e.stock_tokens),
    ("minimal", 9, ">", lambda e: e.minimal_tokens),
    ("bound", 7, ">", lambda e: _ratio(e.token_bound)),
    ("reached", 8, ">", lambda e: _ratio(e.bound_reached and 100 * e.bound_reached, "%")),
    ("block", 5, ">", lambda e: e.block_size or "-"),
    ("warm-up", 7, ">", lambda e: e.warmup_tokens),
    ("probes", 6, ">", lambda e: e.probe_requests),
    ("fallbacks", 12, "<", lambda e: _causes(e.fallbacks)),
    ("phases (s)", 10, "<", lambda e: _phases(e.phase_wall_s)),
]
_GENERATION = [
    ("prefill", 8, ">", lambda e: round(e.prefill_tokens) if e.decode_steps else "-"),
    ("decode", 8, ">", lambda e: round(e.decode_tokens) if e.decode_steps else "-"),
    ("rows", 5, ">", lambda e: f"{e.mean_live_rows:.1f}" if e.decode_steps else "-"),
]
