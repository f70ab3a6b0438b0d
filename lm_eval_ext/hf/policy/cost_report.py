"""PURE: the cost report: what each task and request type cost, attached to lm-eval's results.

Batches mix tasks, so wall time and computed tokens of a batch are apportioned to its requests
by their useful tokens; request and useful-token counts per task are exact.
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
    #: generation: prompt tokens prefilled (shared prefixes once), tokens decoded, and the decode
    #: steps with the rows live in them (live rows on average = live_row_steps / decode_steps)
    prefill_tokens: float = 0.0
    decode_tokens: float = 0.0
    decode_steps: int = 0
    live_row_steps: int = 0

    @property
    def mean_live_rows(self) -> float:
        return self.live_row_steps / self.decode_steps if self.decode_steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_computed / self.wall_s if self.wall_s else 0.0

    @property
    def padding_fraction(self) -> float:
        return 0.0 if not self.padded_tokens else 1.0 - self.tokens_computed / self.padded_tokens

    def as_dict(self) -> dict:
        out = asdict(self)
        out["tokens_computed"] = round(self.tokens_computed)
        out["padded_tokens"] = round(self.padded_tokens)
        out["wall_s"] = round(self.wall_s, 4)
        out["padding_fraction"] = round(self.padding_fraction, 4)
        out["tokens_per_s"] = round(self.tokens_per_s, 1)
        if self.decode_steps:
            out["prefill_tokens"], out["decode_tokens"] = round(self.prefill_tokens), round(self.decode_tokens)
            out["mean_live_rows"] = round(self.mean_live_rows, 2)
        else:
            for name in ("prefill_tokens", "decode_tokens", "decode_steps", "live_row_steps"):
                del out[name]
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
    ) -> None:
        """Apportion one batch's cost to its tasks by their share of its useful tokens."""
        total_useful = sum(useful_by_task.values()) or 1
        for task, useful in useful_by_task.items():
            share = useful / total_useful
            entry = self.entry(task, request_type)
            entry.num_requests += requests_by_task.get(task, 0)
            entry.useful_tokens += useful
            entry.wall_s += wall_s * share
            entry.tokens_computed += computed_tokens * share
            entry.padded_tokens += padded_tokens * share

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

    def as_dict(self) -> dict:
        return {f"{task}/{kind}": e.as_dict() for (task, kind), e in sorted(self.entries.items())}

    def format_table(self) -> str:
        header = f"{'task':<22} {'request type':<22} {'reqs':>6} {'wall_s':>8} {'computed':>9} " \
                 f"{'useful':>9} {'tok/s':>7} {'pad%':>6} {'budget':>7} {'ooms':>5} {'peak MiB':>9} " \
                 f"{'prefill':>8} {'decode':>8} {'rows':>5}"
        lines = [header]
        for (task, kind), e in sorted(self.entries.items()):
            peak = max(e.peak_memory_bytes.values(), default=0) / 2**20
            generation = (f"{round(e.prefill_tokens):>8} {round(e.decode_tokens):>8} {e.mean_live_rows:>5.1f}"
                          if e.decode_steps else f"{'-':>8} {'-':>8} {'-':>5}")
            lines.append(
                f"{task[:22]:<22} {kind:<22} {e.num_requests:>6} {e.wall_s:>8.2f} "
                f"{round(e.tokens_computed):>9} {e.useful_tokens:>9} {e.tokens_per_s:>7.0f} "
                f"{100 * e.padding_fraction:>6.1f} {e.budget_tokens if e.budget_tokens is not None else '-':>7} "
                f"{e.oom_retries:>5} {peak:>9.0f} {generation}"
            )
        return "\n".join(lines)

    def log(self) -> None:
        if self.entries:
            logger.info("lm-eval-ext cost report\n%s", self.format_table())
