"""One model's view of the request store: look requests up, write results as they arrive.

Backend-agnostic: a backend supplies its identity (called once, on the first request) and a label;
:class:`~lm_eval_ext.backend.front.RequestFront` does the rest of a call (what to compute, when to
store). Results are written through a :class:`StoreWriter`, one transaction per :meth:`~StoreWriter.flush`
(the front flushes once per engine batch, and whatever is buffered when a computation ends, normally
or not), so a killed run resumes where it stopped.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lm_eval_ext.cache.fingerprint import ModelIdentity, fingerprint
from lm_eval_ext.cache.keys import CachedValueError, args_json, decode_value, encode_value, request_key
from lm_eval_ext.cache.report import CacheStats, build_report
from lm_eval_ext.cache.layout import open_store, store_exists
from lm_eval_ext.cache.shards import ShardedStore
from lm_eval_ext.cache.store import CacheFileError, Entry, RequestStore, default_cache_dir
from lm_eval_ext.errors import RunInterrupted

logger = logging.getLogger(__name__)
MISSING = object()
"""A request the cache could not answer (:meth:`RequestCache.lookup`)."""


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


class StoreWriter:
    """Buffers one call's results; :meth:`flush` writes them in one transaction."""

    def __init__(self, store: RequestStore | ShardedStore, model_fingerprint: str, request_type: str) -> None:
        self.store, self.fingerprint, self.request_type = store, model_fingerprint, request_type
        self.buffer: list[tuple[str, str, str]] = []
        self.written: set[str] = set()
        self.last_flush_s = time.perf_counter()

    def put(self, args: tuple, value: Any) -> None:
        """``args``: the request's arguments as keyed (:meth:`RequestCache.keys`)."""
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


class RequestCache:
    """Mode, store, fingerprint (computed on first use) and counters of one model.

    ``identity`` returns what decides the model's outputs; ``label`` names the model in the store.
    A front that already knows the fingerprint (a fast-path memo) passes ``known_fingerprint``.
    """

    def __init__(self, mode: CacheMode | str, cache_dir: str | Path | None, *,
                 identity: Callable[[], ModelIdentity] | None = None, label: Callable[[], str] = lambda: "model",
                 known_fingerprint: str | None = None) -> None:
        self.mode = CacheMode(mode)
        self.dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.stats = CacheStats()
        self.store: RequestStore | ShardedStore | None = None
        self.fingerprint: str | None = known_fingerprint
        self._identity, self._label = identity, label
        self._opened = False

    def identity(self) -> ModelIdentity:
        if self._identity is None:
            raise ValueError("this request cache was made from a known fingerprint and has no identity")
        return self._identity()

    def open(self) -> tuple[RequestStore | ShardedStore | None, str]:
        """Open the store and compute the fingerprint once, on the first request."""
        if not self._opened:
            identity = None if self.fingerprint else self.identity()
            self.fingerprint = self.fingerprint or fingerprint(identity)
            layout = None
            if self.mode is CacheMode.READ and not store_exists(self.dir):
                logger.warning("request cache: cache=read but %s has no cache yet; computing everything", self.dir)
            else:
                # cache=read opens read-only: nothing is written, and read-only storage can be read
                self.store, layout = open_store(self.dir, readonly=not self.mode.writes)
                if self.mode.writes and identity is not None:
                    self.store.register_model(self.fingerprint, self._label(), identity.to_json())
            self._opened = True
            logger.info("request cache: %s, mode %s, model %s%s", self.dir, self.mode.value, self.fingerprint[:16],
                        f", layout {layout.layout} ({layout.reason})" if layout else "")
        return self.store, self.fingerprint

    def keys(self, request_type: str, keyed_args: list[tuple]) -> list[str | None]:
        _, model_fingerprint = self.open()
        return [request_key(model_fingerprint, request_type, args) for args in keyed_args]

    def lookup(self, request_type: str, requests: list, *, keyed_args: list[tuple] | None = None,
               all_or_nothing: bool = False) -> list | None:
        """Each request's cached value, or :data:`MISSING`; hits and misses are counted. A damaged
        entry stops the run with the fix (it is never returned). ``keyed_args``: each request's
        arguments as keyed (default: ``request.args``; a reproducibly sampled request carries its
        :func:`~lm_eval_ext.cache.keys.sample_identity`). ``all_or_nothing``: ``None`` (and nothing
        counted) unless every request is cached."""
        if self.mode is CacheMode.OFF:
            return None if all_or_nothing else [MISSING] * len(requests)
        store, _ = self.open()
        keys = self.keys(request_type, keyed_args or [tuple(r.args) for r in requests])
        found = store.get_many([k for k in keys if k is not None]) if store is not None and self.mode.reads else {}
        if all_or_nothing and any(key not in found for key in keys):
            return None
        results: list[Any] = [MISSING] * len(requests)
        for index, key in enumerate(keys):
            if key in found:
                try:
                    results[index] = decode_value(request_type, found[key][0])
                except CachedValueError as exc:
                    if all_or_nothing:
                        return None  # the backend's own lookup reports the damaged entry with the fix
                    raise CacheFileError(
                        f"cache database {store.path} holds a damaged entry ({exc}); move it aside "
                        f"(mv '{store.path}' '{store.path}.bad') or pass cache=off"
                    ) from None
        for request, key in zip(requests, keys):
            if key in found:
                self.stats.add_hit(request, request_type, found[key][1])
            else:
                self.stats.add_miss(request, request_type, cacheable=key is not None)
        if self.mode.writes:
            store.count_hits([key for key in keys if key in found])
        return results

    def writer(self, request_type: str) -> StoreWriter | None:
        """Where a computation's results go, or None when this mode stores nothing."""
        if not self.mode.writes:
            return None
        store, model_fingerprint = self.open()
        if store is None or not self.mode.writes:
            return None
        return StoreWriter(store, model_fingerprint, request_type)

    def interrupted(self, num_requests: int, num_safe: int, code: int = 130, num_done: int | None = None
                    ) -> RunInterrupted:
        """Ctrl-C (or SIGTERM) while computing: what is safe, in one line; ``code``: the exit status;
        ``num_done``: answered so far (cached or computed), where a cache that does not write keeps none."""
        if not self.mode.writes:
            done = num_safe if num_done is None else num_done
            return RunInterrupted(f"interrupted after {done} of {num_requests} requests; cache={self.mode.value} "
                                  "stores nothing, so a rerun computes them again (cache=readwrite would keep them)",
                                  code)
        return RunInterrupted(f"interrupted after {num_safe} of {num_requests} requests; {num_safe} are in the request "
                              "cache; rerun the same command to resume", code)

    def report(self, *, rank: int = 0, world_size: int = 1) -> dict:
        return build_report(self.stats, mode=self.mode.value, path=str(self.dir), fingerprint=self.fingerprint,
                            rank=rank, world_size=world_size)
