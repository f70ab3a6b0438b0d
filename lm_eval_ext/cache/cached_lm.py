"""The request cache in front of a backend: look every request up before batching, compute only the
misses, store each batch as it finishes. Backend-agnostic: a backend supplies its identity and the
function that computes misses (:meth:`RequestCache.answer`).

``HfExtLM`` owns a :class:`RequestCache`; ``vllm_ext`` still reaches it through the thin
:class:`RequestCacheMixin` at the end of this module.

Results reach the store through lm-eval's own per-result hook (``self.cache_hook.add_partial``,
called by HFLM as each result is computed): during a computation the hook is wrapped so that
results are buffered and written one transaction per finished batch, and still forwarded to
lm-eval's hook, so ``--use_cache`` keeps working. Whatever the hook missed is written when the
call returns, so a backend that never calls the hook is still cached (only less often). A backend
that knows when a unit of work has finished (a vLLM engine step, an HTTP response) calls
:meth:`store_arrived_results` to write what arrived without waiting for a full batch.
"""

from __future__ import annotations

import abc
import enum
import logging
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

from lm_eval_ext.cache.store import CacheFileError, Entry, RequestStore, default_cache_dir
from lm_eval_ext.cache.report import CacheStats, build_report
from lm_eval_ext.cache.fingerprint import ModelIdentity, fingerprint
from lm_eval_ext.errors import RunInterrupted
from lm_eval_ext.cache.keys import CachedValueError, args_json, decode_value, encode_value, request_key

logger = logging.getLogger(__name__)
_MISSING = object()


class CacheMode(enum.Enum):
    OFF = "off"
    READ = "read"
    WRITE = "write"
    READWRITE = "readwrite"

    @property
    def reads(self) -> bool:
        return self in (CacheMode.READ, CacheMode.READWRITE)

    @property
    def writes(self) -> bool:
        return self in (CacheMode.WRITE, CacheMode.READWRITE)


class _BatchWriter:
    """Buffers results from the hook; one transaction per ``flush_every`` results (one batch)."""

    def __init__(self, store: RequestStore, model_fingerprint: str, request_type: str, flush_every: int):
        self.store, self.fingerprint, self.request_type = store, model_fingerprint, request_type
        self.flush_every = max(flush_every, 1)
        self.buffer: list[tuple[str, str, str]] = []
        self.written: set[str] = set()
        self.last_flush_s = time.perf_counter()

    def add(self, args: Any, value: Any) -> None:
        key = request_key(self.fingerprint, self.request_type, tuple(args))
        if key is None or key in self.written:
            return
        try:
            encoded = encode_value(self.request_type, value)
        except (TypeError, ValueError) as exc:
            logger.warning("not caching a %s result of unexpected shape: %s", self.request_type, exc)
            return
        self.buffer.append((key, args_json(args), encoded))
        self.written.add(key)
        if len(self.buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        now = time.perf_counter()
        if self.buffer:
            share_s = (now - self.last_flush_s) / len(self.buffer)
            self.store.put_many([
                Entry(key, self.fingerprint, self.request_type, args, value, share_s)
                for key, args, value in self.buffer
            ])
            self.buffer = []
        self.last_flush_s = now


class _ChainedHook:
    """Stands in for ``self.cache_hook`` during a computation: ours first, then lm-eval's."""

    def __init__(self, inner: Any, request_type: str, writer: _BatchWriter) -> None:
        self.inner, self.request_type, self.writer = inner, request_type, writer

    def add_partial(self, attr: str, req: Any, res: Any) -> None:
        if self.inner is not None:
            self.inner.add_partial(attr, req, res)
        if attr == self.request_type:
            self.writer.add(req, res)


class RequestCache:
    """One model's view of the request store: mode, fingerprint (computed on first use), counters.

    ``identity`` returns what decides the model's outputs (called once, on the first request);
    ``label`` names the model in the store.
    """

    def __init__(self, mode: CacheMode | str, cache_dir: str | Path | None, *,
                 identity: Callable[[], ModelIdentity], label: Callable[[], str]) -> None:
        self.mode = CacheMode(mode)
        self.dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.stats = CacheStats()
        self.store: RequestStore | None = None
        self.fingerprint: str | None = None
        self._identity, self._label = identity, label
        self._writer: _BatchWriter | None = None  # set while misses are computed
        self._stored_now = 0  # results stored by the computation running now (for Ctrl-C's message)

    def identity(self) -> ModelIdentity:
        return self._identity()

    def open(self) -> tuple[RequestStore | None, str]:
        """Open the store and compute the fingerprint once, on the first request."""
        if self.fingerprint is None:
            identity = self._identity()
            self.fingerprint = fingerprint(identity)
            db_missing = not (self.dir / "requests.sqlite").exists()
            if self.mode is CacheMode.READ and db_missing:
                logger.warning("request cache: cache=read but %s has no cache yet; computing everything", self.dir)
            else:
                # cache=read opens read-only: nothing is written, and read-only storage can be read
                self.store = RequestStore.open(self.dir, readonly=not self.mode.writes)
                if self.mode.writes:
                    self.store.register_model(self.fingerprint, self._label(), identity.to_json())
            logger.info("request cache: %s, mode %s, model %s", self.dir, self.mode.value, self.fingerprint[:16])
        return self.store, self.fingerprint

    def answer(self, request_type: str, requests: list, compute: Callable[[list], list], *, hook_owner: Any,
               prepare: Callable[[], None] = lambda: None, flush_every: int = 1, collective: bool = False,
               any_rank: Callable[[bool], bool] = lambda flag: flag,
               chunks: Callable[[list], list[list]] = lambda todo: [todo]) -> list:
        """Every request's result: cached ones from the store, the rest from ``compute(misses)``.

        ``hook_owner.cache_hook`` (lm-eval's per-result hook) is wrapped while ``compute`` runs, so
        results are stored as the backend reports them, ``flush_every`` per transaction. When
        ``collective`` (the computation talks to other ranks), a rank whose requests are all cached
        still computes one request if ``any_rank`` says another rank has misses. ``chunks`` splits
        the misses into backend calls, each stored when it returns.
        """
        if self.mode is CacheMode.OFF:
            prepare()
            return compute(requests)
        store, model_fingerprint = self.open()
        keys = [request_key(model_fingerprint, request_type, tuple(r.args)) for r in requests]
        results = self._lookup(store, request_type, requests, keys)
        misses = [i for i, value in enumerate(results) if value is _MISSING]
        must_enter = collective and any_rank(bool(misses))
        if misses or (must_enter and requests):
            todo = [requests[i] for i in (misses or [0])]  # an empty-handed rank joins with one request
            prepare()  # before the clock starts: loading weights is not compute
            started_s = time.perf_counter()
            self._stored_now = 0
            try:
                if store is None or not self.mode.writes:
                    computed = compute(todo)
                else:
                    computed = self._compute_and_store(store, request_type, todo, compute, hook_owner,
                                                       flush_every, chunks)
            except KeyboardInterrupt:
                raise self._interrupted(len(requests), len(requests) - len(misses)) from None
            self.stats.add_computed([requests[i] for i in misses], request_type, time.perf_counter() - started_s)
            for index, value in zip(misses, computed):
                results[index] = value
        logger.info("request cache: %s: %d hits, %d computed, %d not cacheable",
                    request_type, len(requests) - len(misses), len(misses), keys.count(None))
        return results

    def _interrupted(self, num_requests: int, num_cached_before: int) -> RunInterrupted:
        """Ctrl-C while computing: what is safe, in one line (every finished batch was stored)."""
        done = num_cached_before + self._stored_now
        if not self.mode.writes:
            return RunInterrupted(f"interrupted after {done} of {num_requests} requests; cache={self.mode.value} "
                                  "stores nothing, so a rerun computes them again (cache=readwrite would keep them)")
        return RunInterrupted(f"interrupted after {done} of {num_requests} requests; {done} are in the request "
                              "cache; rerun the same command to resume")

    def _lookup(self, store: RequestStore | None, request_type: str, requests: list, keys: list) -> list:
        results: list[Any] = [_MISSING] * len(requests)
        if store is None or not self.mode.reads:
            return results
        found = store.get_many([k for k in keys if k is not None])
        hit_keys = []
        for index, key in enumerate(keys):
            if key in found:
                value_json, compute_s = found[key]
                try:
                    results[index] = decode_value(request_type, value_json)
                except CachedValueError as exc:
                    raise CacheFileError(
                        f"cache database {store.path} holds a damaged entry ({exc}); move it aside "
                        f"(mv '{store.path}' '{store.path}.bad') or pass cache=off"
                    ) from None
                self.stats.add_hit(requests[index], request_type, compute_s)
                hit_keys.append(key)
            else:
                self.stats.add_miss(requests[index], request_type, cacheable=key is not None)
        if self.mode.writes:
            store.count_hits(hit_keys)
        return results

    def _compute_and_store(self, store: RequestStore, request_type: str, todo: list, compute, hook_owner,
                           flush_every: int, chunks) -> list:
        writer = _BatchWriter(store, self.fingerprint, request_type, flush_every)
        inner_hook = getattr(hook_owner, "cache_hook", None)
        hook_owner.cache_hook = _ChainedHook(inner_hook, request_type, writer)
        self._writer = writer
        computed: list = []
        try:
            for chunk in chunks(todo):
                values = compute(chunk)
                if len(values) != len(chunk):
                    raise RuntimeError(f"{request_type} returned {len(values)} results for {len(chunk)} requests")
                for request, value in zip(chunk, values):
                    writer.add(request.args, value)
                writer.flush()
                computed += values
        finally:
            hook_owner.cache_hook, self._writer = inner_hook, None
            writer.flush()  # results the hook saw before an exception are kept
            self._stored_now = len(writer.written)
        return computed

    def store_arrived_results(self) -> None:
        """Write the results the hook has buffered now, in one transaction (no-op outside a
        computation or with the cache off)."""
        if self._writer is not None:
            self._writer.flush()

    def report(self, *, rank: int = 0, world_size: int = 1) -> dict:
        return build_report(self.stats, mode=self.mode.value, path=str(self.dir), fingerprint=self.fingerprint,
                            rank=rank, world_size=world_size)


class RequestCacheMixin(abc.ABC):
    """A :class:`RequestCache` behind a backend's lm-eval methods, for backends built as subclasses
    (``vllm_ext``). Put it before the backend in the bases and call :meth:`_init_request_cache`
    before the backend's ``__init__``. Hooks: :meth:`_cache_model_identity`; optionally
    :meth:`_cache_prepare_compute`, :meth:`_cache_flush_every`, :meth:`_cache_compute_is_collective`,
    :meth:`_cache_any_rank`."""

    @abc.abstractmethod
    def _cache_model_identity(self) -> ModelIdentity:
        """What decides this backend's outputs (see :mod:`lm_eval_ext.cache.fingerprint`)."""

    def _cache_model_label(self) -> str:
        return type(self).__name__

    def _cache_prepare_compute(self) -> None:
        """Called before the first miss is computed (e.g. load weights that were deferred)."""

    def _cache_flush_every(self) -> int:
        return 1

    def _cache_compute_is_collective(self, request_type: str) -> bool:
        return False

    def _cache_any_rank(self, flag: bool) -> bool:
        return flag

    def _init_request_cache(self, mode: str, cache_dir: str | None) -> None:
        self.request_cache = RequestCache(mode, cache_dir, identity=self._cache_model_identity,
                                          label=self._cache_model_label)

    @property
    def _cache_mode(self) -> CacheMode:
        return self.request_cache.mode

    @property
    def _cache_dir(self) -> Path:
        return self.request_cache.dir

    @property
    def _cache_fingerprint(self) -> str | None:
        return self.request_cache.fingerprint

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self._cached_call("loglikelihood", requests, disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self._cached_call("loglikelihood_rolling", requests, disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self._cached_call("generate_until", requests, disable_tqdm)

    def _cached_call(self, request_type: str, requests: list, disable_tqdm: bool) -> list:
        backend_call = getattr(super(), request_type)
        return self.request_cache.answer(
            request_type, requests, lambda todo: backend_call(todo, disable_tqdm=disable_tqdm), hook_owner=self,
            prepare=self._cache_prepare_compute, flush_every=self._cache_flush_every(),
            collective=self._cache_compute_is_collective(request_type), any_rank=self._cache_any_rank,
        )

    def store_arrived_results(self) -> None:
        self.request_cache.store_arrived_results()

    def request_cache_report(self) -> dict:
        return self.request_cache.report(rank=getattr(self, "rank", 0), world_size=getattr(self, "world_size", 1))

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["request_cache"] = self.request_cache_report()
        return info
