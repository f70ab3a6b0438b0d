"""EDGE (file system): the ``shards`` layout of the request store, for a cache on a network filesystem.

::

    CACHE_DIR/requests.sqlite              entries folded by `lm-eval-ext cache compact` (replaced whole,
                                           read without locks); absent until the first compaction
    CACHE_DIR/shards/HOST-PID-NS.shard     one per writer process: append-only lines (cache/shard_lines.py)

Each writer process appends to its own file and nothing else, so two writers never share a file,
a lock or shared memory, on one host or on many. A batch is committed when its lines are written
and fsynced (one ``write`` + ``fsync`` per :meth:`ShardedStore.put_many`): a kill, a second
SIGTERM or a lost node never takes back a committed batch, and a half-written line is skipped, not
called damage. A reader merges the folded file (first) and every shard (from the offset already
folded) into one index; for a key stored twice the earliest stored value wins, as in SQLite's
``INSERT OR IGNORE``. Hits are not counted in this layout (that would be a write to shared state).
"""

from __future__ import annotations

import atexit
import errno
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from lm_eval_ext.cache.shard_lines import ShardEntry, ShardRead, end_line, entry_line, model_line, parse_shard
from lm_eval_ext.cache.store import DB_FILE, Entry, RequestStore
from lm_eval_ext.errors import UserError

logger = logging.getLogger(__name__)

SHARD_DIR = "shards"
SHARD_SUFFIX = ".shard"


def shard_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / SHARD_DIR


def shard_paths(cache_dir: Path) -> list[Path]:
    folder = shard_dir(cache_dir)
    return sorted(folder.glob("*" + SHARD_SUFFIX)) if folder.is_dir() else []


def read_shard(path: Path, offset: int = 0) -> ShardRead | None:
    """The committed lines of ``path`` from ``offset``; None when the file is gone (compacted away)."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return None
    return parse_shard(data, offset)


def this_host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"


def shard_owner(path: Path) -> tuple[str, int] | None:
    """``(host, pid)`` of the process that writes ``path``, from its name."""
    match = re.fullmatch(r"(.+)-(\d+)-[0-9a-f]+" + re.escape(SHARD_SUFFIX), path.name)
    return (match.group(1), int(match.group(2))) if match else None


def _full_disk(where: Path) -> UserError:
    return UserError(f"the disk holding the request cache {where} is full; free space and rerun (every batch stored "
                     "before is kept), or pass cache_dir=OTHER_DIR or cache=off in model_args")


class ShardWriter:
    """This process's shard file, created on the first write; :meth:`close` marks it finished."""

    def __init__(self, cache_dir: Path) -> None:
        self.folder = shard_dir(cache_dir)
        self.path: Path | None = None
        self._fd: int | None = None

    def _open(self) -> int:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.path = self.folder / f"{this_host()}-{os.getpid()}-{time.time_ns():x}{SHARD_SUFFIX}"
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _full_disk(self.folder) from None
            raise UserError(f"cannot create a shard in the request cache {self.folder} ({exc.strerror}); pass "
                            "cache_dir=A_WRITABLE_DIR, cache=read to only read it, or cache=off") from None
        atexit.register(self.close)
        logger.info("request cache: this process writes %s", self.path)
        return fd

    def write(self, lines: Iterable[bytes]) -> None:
        """Append ``lines`` and fsync: committed when this returns."""
        data = b"".join(lines)
        if not data:
            return
        if self._fd is None:
            self._fd = self._open()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as exc:
            # what was half written stays a torn tail of this file; later batches go to a new one
            self._abandon()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _full_disk(self.folder) from None
            raise

    def _abandon(self) -> None:
        fd, self._fd = self._fd, None
        try:
            os.close(fd)
        except OSError:
            pass

    def close(self) -> None:
        """Mark the file finished (compaction may then delete it once folded). Idempotent."""
        if self._fd is None:
            return
        try:
            os.write(self._fd, end_line(time.time()))
            os.fsync(self._fd)
        except OSError:
            pass  # unfinished to a reader: compaction keeps it until it is stale
        self._abandon()


class ShardedStore:
    """The request store over a folded SQLite file and shard files (see the module docstring).

    ``main``: the SQLite file, or None. ``writes_main``: results go to it (the ``wal`` layout with
    shards left in the folder from an earlier run); otherwise to ``writer`` (None: read only)."""

    def __init__(self, cache_dir: Path, main: RequestStore | None, *, writes_main: bool = False,
                 writer: ShardWriter | None = None) -> None:
        self.dir = Path(cache_dir)
        self.path = self.dir / DB_FILE
        self.main, self.writes_main, self.writer = main, writes_main, writer
        self.readonly = writer is None and not writes_main
        self._index: dict[str, ShardEntry] = {}
        self._models_written: set[str] = set()
        self.num_unreadable_lines = 0
        folded = main.folded_offsets() if main is not None else {}
        for path in shard_paths(self.dir):
            read = read_shard(path, folded.get(path.name, 0))
            if read is not None:
                self._add(read.entries)
                self.num_unreadable_lines += len(read.unreadable)

    def _add(self, entries: Iterable[ShardEntry]) -> None:
        for entry in entries:
            known = self._index.get(entry.key)
            if known is None or entry.created_s < known.created_s:
                self._index[entry.key] = entry

    def register_model(self, fingerprint: str, label: str, identity_json: str) -> None:
        if self.writes_main:
            self.main.register_model(fingerprint, label, identity_json)
        elif self.writer is not None and fingerprint not in self._models_written:
            self.writer.write([model_line(fingerprint, json.dumps(label), identity_json, time.time())])
            self._models_written.add(fingerprint)

    def get_many(self, keys: Sequence[str]) -> dict[str, tuple[str, float]]:
        found = self.main.get_many(keys) if self.main is not None else {}
        for key in keys:
            if key not in found and key in self._index:
                entry = self._index[key]
                found[key] = (entry.value_json, entry.compute_s)
        return found

    def count_hits(self, keys: Iterable[str]) -> None:
        if self.writes_main:
            self.main.count_hits(keys)

    def put_many(self, entries: Sequence[Entry]) -> None:
        if self.writes_main:
            self.main.put_many(entries)
            return
        if self.writer is None or not entries:
            return
        now = time.time()
        self.writer.write(entry_line(e.key, e.fingerprint, e.request_type, e.args_json, e.value_json, e.compute_s,
                                     now) for e in entries)
        self._add(ShardEntry(e.key, e.fingerprint, e.request_type, e.compute_s, now, e.value_json, e.args_json)
                  for e in entries)

    @property
    def num_shard_entries(self) -> int:
        return len(self._index)

    def keys(self) -> set[str]:
        return set(self._index)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.main is not None:
            self.main.close()
