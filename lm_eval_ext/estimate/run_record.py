"""EDGE: what a backend keeps during a run for "estimate against actual", and leaves for the next estimate.

A backend owns one :class:`RunEstimate`. Its :class:`~lm_eval_ext.estimate.ledger.Ledger` starts, at
the first call, from this model's newest history record on this machine (the model named by the
request cache's fingerprint, the machine by :func:`lm_eval_ext.estimate.history.hardware_key`);
without one the run's estimate is tokens only. :meth:`RunEstimate.finish` (from ``get_model_info``)
takes what was measured, returns the per-task comparison for the results, and, on rank 0, adds the
run's rates to the history.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from lm_eval_ext.estimate import history
from lm_eval_ext.estimate.ledger import Ledger, rates_from_history
from lm_eval_ext.backend.work import TokenCount

logger = logging.getLogger(__name__)

_KINDS = ("loglikelihood", "loglikelihood_rolling", "generate_until")


class RunEstimate:
    """``fingerprint()`` gives the model's request-cache fingerprint (None: no history);
    ``device`` is ``cpu`` or ``cuda``; ``num_replicas`` the processes that share the documents."""

    def __init__(self, backend: str, fingerprint: Callable[[], str | None], *, device: str,
                 num_replicas: int = 1) -> None:
        self.backend, self.device, self.num_replicas = backend, device, num_replicas
        self._fingerprint = fingerprint
        self._ledger: Ledger | None = None
        self.key: str | None = None

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            remembered = None
            try:
                model = self._fingerprint()
                if model is not None:
                    hardware = history.hardware_key(history.hardware_description(self.device))
                    self.key = history.record_key(model, hardware, self.backend, self.num_replicas)
                    remembered = history.latest(self.key)
            except Exception as exc:  # noqa: BLE001 (an estimate must never stop a run)
                logger.debug("no run history: %s", exc)
            rates = {kind: r for kind in _KINDS if remembered and (r := rates_from_history(remembered, kind))}
            self._ledger = Ledger(rates, history=remembered)
        return self._ledger

    def counted(self, request_type: str, counts: Mapping[str, TokenCount]) -> None:
        self.ledger.counted(request_type, counts)

    def expected_generated(self, task: str, budget: int) -> float:
        return self.ledger.expected_generated(task, budget)

    def call_done(self, request_type: str, wall_s: float) -> None:
        self.ledger.call_done(request_type, wall_s)

    def finish(self, cost_report: Any = None, *, rank: int = 0) -> dict:
        """Estimate against actual per ``task/request type``; the engine's cost report, when given,
        supplies the measured seconds and tokens (and receives the estimate). Rank 0 remembers."""
        ledger = self.ledger
        if cost_report is not None:
            for (task, kind), entry in cost_report.entries.items():
                count = ledger.entries.get((task, kind))
                generated = (entry.useful_tokens - count.count.context_tokens
                             if kind == "generate_until" and count is not None else None)
                ledger.measured(task, kind, wall_s=entry.wall_s, computed_tokens=entry.tokens_computed,
                                generated_tokens=generated)
                if count is not None:
                    cost_report.set_estimate(task, kind, tokens=count.count.computed_tokens,
                                             seconds=count.estimated_s, source=count.source)
        record = ledger.history_record()
        if rank == 0 and self.key is not None and record["request_types"]:
            history.remember(self.key, {"backend": self.backend, **record})
            logger.info("run history: rates remembered for the next estimate (%s)", history.history_path())
        return ledger.as_dict()
