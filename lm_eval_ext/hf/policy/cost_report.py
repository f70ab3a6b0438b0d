"""PURE: the cost report: what each task and request type cost, attached to lm-eval's results.

Batches mix tasks, so wall time of a batch is apportioned to its requests by their useful tokens;
request and useful-token counts per task are exact, and so are computed tokens when the engine
attributes them itself (``computed_by_task``: its rows and prefixes, as ``token_count`` counts them).
Each entry also carries the estimate the run started from (``estimated_*``, see
:mod:`lm_eval_ext.estimate.ledger`), next to what it measured.
Reached through ``HfExtLM.get_model_info()["cost_report"]``, which lm-eval copies into
``results["config"]`` after evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

#: the package's loggers write through lm-eval's handlers (``logs.share_lm_eval_handlers``), so the
#: table shows up next to lm-eval's own output at lm-eval's verbosity
logger = logging.getLogger(__name__)


@dataclass
class CostEntry:
    task: str
    request_type: str
    num_requests: int = 0
    wall_s: float = 0.0
    tokens_computed: float = 0.0
    useful_tokens: int = 0
    padded_tokens: float = 0.0
    budget_tokens: int | None = None
    oom_retries: int = 0
    peak_memory_bytes: dict[str, int] = field(default_factory=dict)
    estimated_tokens: float | None = None
    estimated_s: float | None = None
    estimate_source: str | None = None

    @property
    def padding_fraction(self) -> float:
        return 0.0 if not self.padded_tokens else 1.0 - self.tokens_computed / self.padded_tokens

    def as_dict(self) -> dict:
        out = asdict(self)
        out["tokens_computed"] = round(self.tokens_computed)
        out["padded_tokens"] = round(self.padded_tokens)
        out["wall_s"] = round(self.wall_s, 4)
        out["padding_fraction"] = round(self.padding_fraction, 4)
        for key in ("estimated_tokens", "estimated_s"):
            out[key] = None if out[key] is None else round(out[key], 2)
        return out


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

    def as_dict(self) -> dict:
        return {f"{task}/{kind}": e.as_dict() for (task, kind), e in sorted(self.entries.items())}

    def format_table(self) -> str:
        header = f"{'task':<22} {'request type':<22} {'reqs':>6} {'wall_s':>8} {'computed':>9} " \
                 f"{'useful':>9} {'pad%':>6} {'budget':>7} {'ooms':>5} {'peak MiB':>9}"
        lines = [header]
        for (task, kind), e in sorted(self.entries.items()):
            peak = max(e.peak_memory_bytes.values(), default=0) / 2**20
            lines.append(
                f"{task[:22]:<22} {kind:<22} {e.num_requests:>6} {e.wall_s:>8.2f} "
                f"{round(e.tokens_computed):>9} {e.useful_tokens:>9} {100 * e.padding_fraction:>6.1f} "
                f"{e.budget_tokens if e.budget_tokens is not None else '-':>7} {e.oom_retries:>5} {peak:>9.0f}"
            )
        return "\n".join(lines)

    def log(self) -> None:
        if self.entries:
            logger.info("lm-eval-ext cost report\n%s", self.format_table())
