"""RequestCacheMixin: look every request up before batching, compute only the misses, store each
batch as it finishes. Backend-agnostic: a backend supplies its identity and a way to get ready.

Put the mixin before the backend in the bases (``class HfExtLM(HfRequestCacheMixin, HFLM)``) and
call :meth:`_init_request_cache` before the backend's ``__init__``. The backend's
``loglikelihood``/``loglikelihood_rolling``/``generate_until`` then only ever see misses.

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
from typing import Any

from lm_eval_ext.cache.store import CacheFileError, Entry, RequestStore, default_cache_dir
from lm_eval_ext.cache.report import CacheStats, build_report
from lm_eval_ext.cache.fingerprint import ModelIdentity, fingerprint
from lm_eval_ext.cache.keys import CachedValueError, args_json, decode_value, encode_value, request_key

logger = logging.getLogger("lm_eval_ext.cache.store")
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


class RequestCacheMixin(abc.ABC):
    """Backend hooks to implement: :meth:`_cache_model_identity`; optionally
    :meth:`_cache_prepare_compute`, :meth:`_cache_flush_every`, :meth:`_cache_compute_is_collective`
    and :meth:`_cache_any_rank`."""

    # ------------------------------------------------------------------ backend hooks

    @abc.abstractmethod
    def _cache_model_identity(self) -> ModelIdentity:
        """What decides this backend's outputs (see :mod:`lm_eval_ext.cache.fingerprint`)."""

    def _cache_model_label(self) -> str:
        return type(self).__name__

    def _cache_prepare_compute(self) -> None:
        """Called before the first miss is computed (e.g. load weights that were deferred)."""

    def _cache_flush_every(self) -> int:
        """Results per write transaction: the backend's batch size."""
        return 1

    def _cache_compute_is_collective(self, request_type: str) -> bool:
        """True when the backend's computation for this type talks to other ranks, so every rank
        must enter it if any rank does."""
        return False

    def _cache_any_rank(self, flag: bool) -> bool:
        return flag

    # ------------------------------------------------------------------ setup

    def _init_request_cache(self, mode: str, cache_dir: str | None) -> None:
        self._cache_mode = CacheMode(mode)
        self._cache_writer: _BatchWriter | None = None  # set while misses are computed
        self._cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self._cache_store: RequestStore | None = None
        self._cache_fingerprint: str | None = None
        self._cache_stats = CacheStats()

    def _request_cache(self) -> tuple[RequestStore | None, str]:
        """Open the store and compute the fingerprint once, on the first request."""
        if self._cache_fingerprint is None:
            identity = self._cache_model_identity()
            self._cache_fingerprint = fingerprint(identity)
            db_missing = not (self._cache_dir / "requests.sqlite").exists()
            if self._cache_mode is CacheMode.READ and db_missing:
                logger.warning("request cache: cache=read but %s has no cache yet; computing everything", self._cache_dir)
            else:
                self._cache_store = RequestStore.open(self._cache_dir)
                if self._cache_mode.writes:
                    self._cache_store.register_model(self._cache_fingerprint, self._cache_model_label(), identity.to_json())
            logger.info("request cache: %s, mode %s, model %s", self._cache_dir, self._cache_mode.value, self._cache_fingerprint[:16])
        return self._cache_store, self._cache_fingerprint

    # ------------------------------------------------------------------ lm-eval entry points

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self._cached_call("loglikelihood", requests, disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self._cached_call("loglikelihood_rolling", requests, disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self._cached_call("generate_until", requests, disable_tqdm)

    def _compute(self, request_type: str, requests: list, disable_tqdm: bool) -> list:
        self._cache_prepare_compute()
        return getattr(super(), request_type)(requests, disable_tqdm=disable_tqdm)

    def _cached_call(self, request_type: str, requests: list, disable_tqdm: bool) -> list:
        if self._cache_mode is CacheMode.OFF:
            return self._compute(request_type, requests, disable_tqdm)
        store, model_fingerprint = self._request_cache()
        keys = [request_key(model_fingerprint, request_type, tuple(r.args)) for r in requests]
        results = self._lookup(store, request_type, requests, keys)
        misses = [i for i, value in enumerate(results) if value is _MISSING]
        must_enter = self._cache_compute_is_collective(request_type) and self._cache_any_rank(bool(misses))
        if misses or (must_enter and requests):
            # a rank with nothing to compute still joins its peers' collectives with one request
            todo = misses or [0]
            started_s = time.perf_counter()
            computed = self._compute_and_store(store, model_fingerprint, request_type, [requests[i] for i in todo], disable_tqdm)
            self._cache_stats.add_computed([requests[i] for i in misses], request_type, time.perf_counter() - started_s)
            for index, value in zip(misses, computed):
                results[index] = value
        logger.info(
            "request cache: %s: %d hits, %d computed, %d not cacheable",
            request_type, len(requests) - len(misses), len(misses), keys.count(None),
        )
        return results

    def _lookup(self, store: RequestStore | None, request_type: str, requests: list, keys: list) -> list:
        results: list[Any] = [_MISSING] * len(requests)
        if store is None or not self._cache_mode.reads:
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
                self._cache_stats.add_hit(requests[index], request_type, compute_s)
                hit_keys.append(key)
            else:
                self._cache_stats.add_miss(requests[index], request_type, cacheable=key is not None)
        if self._cache_mode.writes:
            store.count_hits(hit_keys)
        return results

    def _compute_and_store(self, store, model_fingerprint, request_type, todo: list, disable_tqdm: bool) -> list:
        if store is None or not self._cache_mode.writes:
            return self._compute(request_type, todo, disable_tqdm)
        self._cache_prepare_compute()  # before the writer's clock starts: loading is not compute
        writer = _BatchWriter(store, model_fingerprint, request_type, self._cache_flush_every())
        inner_hook = getattr(self, "cache_hook", None)
        self.cache_hook = _ChainedHook(inner_hook, request_type, writer)
        self._cache_writer = writer
        computed: list = []
        try:
            for chunk in self._cache_compute_chunks(request_type, todo):
                values = self._compute(request_type, chunk, disable_tqdm)
                if len(values) != len(chunk):
                    raise RuntimeError(f"{request_type} returned {len(values)} results for {len(chunk)} requests")
                for request, value in zip(chunk, values):
                    writer.add(request.args, value)
                writer.flush()
                computed += values
        finally:
            self.cache_hook, self._cache_writer = inner_hook, None
            writer.flush()  # results the hook saw before an exception are kept
        return computed

    def _cache_compute_chunks(self, request_type: str, todo: list) -> list[list]:
        """How the misses are handed to the backend; all at once unless a backend reports a
        request type's results only when its whole call returns (see HfRequestCacheMixin)."""
        return [todo]

    def store_arrived_results(self) -> None:
        """Write the results the hook has buffered now, in one transaction (no-op outside a
        computation or with the cache off)."""
        if self._cache_writer is not None:
            self._cache_writer.flush()

    # ------------------------------------------------------------------ reporting

    def request_cache_report(self) -> dict:
        return build_report(
            self._cache_stats,
            mode=self._cache_mode.value,
            path=str(self._cache_dir),
            fingerprint=self._cache_fingerprint,
            rank=getattr(self, "rank", 0),
            world_size=getattr(self, "world_size", 1),
        )

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["request_cache"] = self.request_cache_report()
        return info
