"""PURE: the state of one lm-eval request-method call, in one object.

lm-eval calls ``loglikelihood(requests)``, ``loglikelihood_rolling(requests)`` or
``generate_until(requests)`` on a model. :class:`~lm_eval_ext.backend.front.RequestFront` answers
what the request cache holds and makes one :class:`Call` for the rest; the call is handed down, as
an argument, to whatever computes them (hf's engine, vLLM's scorer). It says which request type is
computed and which task each request belongs to; it is where each result goes the moment it is
known (:meth:`Call.result`: the request cache and lm-eval's own ``--use_cache`` hook, stored one
transaction per engine batch through :meth:`Call.batch_done`); and it carries the progress bar and
the token budget the engine settled on for this call. Nothing about a call lives anywhere else.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class RequestType(str, enum.Enum):
    """lm-eval's three request methods, spelled as lm-eval spells them."""

    LOGLIKELIHOOD = "loglikelihood"
    ROLLING = "loglikelihood_rolling"
    GENERATE = "generate_until"


class ResultSink(Protocol):
    """Where results go as they arrive (the request cache's writer, lm-eval's hook)."""

    def put(self, request: Any, keyed_args: tuple, value: Any) -> None: ...

    def flush(self) -> None: ...


class Progress(Protocol):
    """A progress bar over the call's requests (``hf/progress.py``), or nothing."""

    def update(self, num_requests: int, computed_tokens: int) -> None: ...

    def status(self, text: str) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    def update(self, num_requests: int, computed_tokens: int) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class NoSink:
    def put(self, request: Any, keyed_args: tuple, value: Any) -> None:
        pass

    def flush(self) -> None:
        pass


@dataclass
class Call:
    """One call's requests to compute, and everything its computation reports to.

    ``requests`` are lm-eval ``Instance`` objects (anything with ``args`` and ``task_name``);
    indices into it name requests everywhere below (engine requests carry them).
    """

    request_type: RequestType
    requests: Sequence[Any]
    sink: ResultSink = field(default_factory=NoSink)
    progress: Progress = field(default_factory=NoProgress)
    #: padded tokens per batch the engine settled on for this call (None: batches by count)
    budget_tokens: int | None = None
    #: requests per batch at most (stock batching by ``batch_size``), or None
    max_batch_requests: int | None = None
    #: per request: which of the lm-eval call's identical requests it is (0 for the first)
    occurrences: Sequence[int] = ()
    #: per request: the seed its sample is drawn from (lm-eval's), or None (greedy, or not reproducible)
    sample_seeds: Sequence[int | None] = ()
    #: per request: its arguments as the request cache keys them (default: ``request.args``)
    keyed_args: Sequence[tuple] = ()
    values: dict[int, Any] = field(default_factory=dict)

    def task_of(self, index: int) -> str:
        return getattr(self.requests[index], "task_name", None) or "unknown"

    @property
    def tasks(self) -> list[str]:
        """The call's tasks, sorted (one task label per cost-report row)."""
        return sorted(Counter(self.task_of(i) for i in range(len(self.requests))))

    def result(self, index: int, value: Any, *, computed_tokens: int = 0) -> None:
        """Request ``index`` is answered: stored (with the batch, see :meth:`batch_done`) and
        counted on the bar. A second answer for the same request is a bug upstream of here."""
        if index in self.values:
            raise AssertionError(f"request {index} of this {self.request_type.value} call answered twice")
        self.values[index] = value
        request = self.requests[index]
        self.sink.put(request, self.keyed_args[index] if self.keyed_args else tuple(request.args), value)
        self.progress.update(1, computed_tokens)

    def computed(self, num_tokens: int) -> None:
        """Tokens computed that no single result owns (a batch's forward): shown as tokens/s."""
        self.progress.update(0, num_tokens)

    def status(self, text: str) -> None:
        """What the computation is doing now, beside the bar's tokens/s (e.g. live rows)."""
        self.progress.status(text)

    def batch_done(self) -> None:
        """An engine batch finished: what arrived is written now, in one transaction."""
        self.sink.flush()

    def ordered_values(self) -> list[Any]:
        missing = [i for i in range(len(self.requests)) if i not in self.values]
        if missing:
            raise AssertionError(f"{len(missing)} of {len(self.requests)} {self.request_type.value} requests "
                                 f"got no result (first: {missing[0]})")
        return [self.values[i] for i in range(len(self.requests))]
