"""What lm-eval's three request methods do in every backend: answer from the request cache, compute
the rest as one :class:`~lm_eval_ext.backend.call.Call`, store each result as it arrives.

A backend composes one :class:`RequestFront` and defines ``loglikelihood``, ``loglikelihood_rolling``
and ``generate_until`` as ``self.front.answer(...)``. It hands the front, per request type, a
``compute(call)`` that answers ``call.requests`` (reporting each result through ``call.result`` as it arrives and calling
``call.batch_done()`` after each engine batch, so every finished batch is written in one
transaction); whatever it only returns is stored when it returns. Ctrl-C or SIGTERM during a
computation keeps what arrived and says how to resume, in one line (``lm_eval_ext/interrupts.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from lm_eval_ext import interrupts
from lm_eval_ext.backend.call import Call, NoProgress, Progress, RequestType
from lm_eval_ext.cache.keys import args_json, sample_identity
from lm_eval_ext.cache.request_cache import MISSING, RequestCache, StoreWriter

logger = logging.getLogger(__name__)


class _Sink:
    """Results of one call: into the request store (if it writes) and lm-eval's own hook."""

    def __init__(self, request_type: RequestType, writer: StoreWriter | None, lm_eval_hook: Any) -> None:
        self.request_type, self.writer, self.lm_eval_hook = request_type, writer, lm_eval_hook
        self.num_put = 0

    def put(self, request: Any, keyed_args: tuple, value: Any) -> None:
        self.num_put += 1
        if self.writer is not None:
            self.writer.put(keyed_args, value)
        if self.lm_eval_hook is not None:  # lm-eval's --use_cache (CachingLM) keeps working
            self.lm_eval_hook.add_partial(self.request_type.value, request.args, value)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    @property
    def num_stored(self) -> int:
        return len(self.writer.written) - len(self.writer.buffer) if self.writer is not None else 0


def occurrence_indices(requests: list) -> list[int]:
    """For each request, how many earlier requests of the list have equal arguments (lm-eval hands
    a task with ``repeats: N`` the same request N times; each copy is its own draw)."""
    seen: dict[str, int] = {}
    found = []
    for request in requests:
        key = args_json(request.args) or repr(request.args)
        found.append(seen.get(key, 0))
        seen[key] = found[-1] + 1
    return found


def _no_progress(request_type: RequestType, num_requests: int, disabled: bool) -> Progress:
    return NoProgress()


class RequestFront:
    """A backend's request methods over its :class:`RequestCache`.

    ``compute[request_type](call)`` answers ``call.requests`` (see the module docstring) and may
    return the values in order (``None``: every value went through ``call.result``). ``prepare()``
    runs before the first computation (e.g. load deferred weights; not timed). When
    ``is_collective(request_type)`` (the computation talks to other ranks) a rank without misses
    still computes an empty call if ``any_rank`` says another rank has misses, so collectives line
    up. ``rank`` is ``(rank, world_size)``, for the log line that says what this rank got.
    ``sampling_seed(request)``: the seed a sampled request is drawn from when the backend draws it
    reproducibly (then it is cached under that seed and its occurrence), else None.
    ``on_call_done(request_type, wall_s)`` hears each finished computation's seconds.
    """

    def __init__(self, cache: RequestCache, compute: Mapping[RequestType, Callable[[Call], list | None]], *,
                 prepare: Callable[[], None] = lambda: None,
                 is_collective: Callable[[RequestType], bool] = lambda request_type: False,
                 any_rank: Callable[[bool], bool] = lambda flag: flag,
                 progress: Callable[[RequestType, int, bool], Progress] = _no_progress,
                 rank: Callable[[], tuple[int, int]] = lambda: (0, 1),
                 sampling_seed: Callable[[Any], int | None] = lambda request: None,
                 on_call_done: Callable[[RequestType, float], None] = lambda request_type, wall_s: None) -> None:
        self.cache = cache
        self._sampling_seed = sampling_seed
        self._compute, self._prepare, self._on_call_done = dict(compute), prepare, on_call_done
        self._is_collective, self._any_rank, self._progress, self._rank = is_collective, any_rank, progress, rank

    def answer(self, request_type: RequestType | str, requests: list, *, disable_tqdm: bool = False,
               lm_eval_hook: Any = None) -> list:
        request_type = RequestType(request_type)
        rank, world_size = self._rank()
        logger.info("rank %d/%d: %s: %d requests over %d documents", rank, world_size, request_type.value,
                    len(requests), len({(r.task_name, r.doc_id) for r in requests}))
        occurrences = occurrence_indices(requests)
        seeds = [self._sampling_seed(r) for r in requests] if request_type is RequestType.GENERATE else []
        keyed = [sample_identity(tuple(r.args), base_seed=seed, occurrence=k) if seed is not None else tuple(r.args)
                 for r, seed, k in zip(requests, seeds or [None] * len(requests), occurrences)]
        results = self.cache.lookup(request_type.value, requests, keyed_args=keyed)
        misses = [i for i, value in enumerate(results) if value is MISSING]
        # every rank takes part in any_rank (a collective) or none does: a rank with misses skipping it
        # left the others' gather paired with its first collective inside the computation (a hang)
        if self._any_rank(bool(misses)) if self._is_collective(request_type) else misses:
            todo = [requests[i] for i in misses]
            self._prepare()  # before the clock starts: loading weights is not compute
            sink = _Sink(request_type, self.cache.writer(request_type.value), lm_eval_hook)
            call = Call(request_type, todo, sink=sink, progress=self._progress(request_type, len(todo), disable_tqdm),
                        occurrences=[occurrences[i] for i in misses], keyed_args=[keyed[i] for i in misses],
                        sample_seeds=[seeds[i] for i in misses] if seeds else [None] * len(misses))
            started_s = time.perf_counter()
            try:
                returned = self._compute[request_type](call)
                if returned is not None and len(returned) != len(todo):
                    raise RuntimeError(f"{request_type.value} returned {len(returned)} results for {len(todo)} requests")
                for index, value in enumerate(returned or ()):
                    if index not in call.values:  # computed, never reported: stored now
                        call.result(index, value)
                values = call.ordered_values()
            except (KeyboardInterrupt, interrupts.Terminated) as stop:
                with interrupts.shielded():
                    sink.flush()
                call.progress.close()  # the bar's last refresh before the line, not after it
                num_cached = len(requests) - len(misses)
                interrupted = self.cache.interrupted(len(requests), num_cached + sink.num_stored,
                                                     interrupts.exit_code(stop), num_cached + sink.num_put)
                interrupts.report(interrupted, rank)
                raise interrupted from None
            finally:
                sink.flush()  # results that arrived before an exception are kept
                call.progress.close()
            wall_s = time.perf_counter() - started_s
            self.cache.stats.add_computed(todo, request_type.value, wall_s)
            self._on_call_done(request_type, wall_s)
            for index, value in zip(misses, values, strict=True):
                results[index] = value
        if self.cache.mode.reads:
            logger.info("request cache: %s: %d hits, %d computed", request_type.value,
                        len(requests) - len(misses), len(misses))
        return results
