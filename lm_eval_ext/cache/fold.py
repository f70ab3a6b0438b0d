"""EDGE (file system): fold shard files into the SQLite file (``lm-eval-ext cache compact``), and the
merged view ``cache stats|verify|export`` read when shards exist.

Folding keeps every guarantee of the shards layout (``cache/shards.py``):

- a shard whose writer may still append is never deleted: only a finished one (its end line is
  written, its writer on this host is gone, or it has not changed for ``stale_after_s``); for the
  others the folded length is recorded, and readers read them from there on;
- ``shards`` layout (network filesystem): the new SQLite file is built on local disk, copied next to
  the old one and renamed over it (atomic), so a reader sees the old file or the new one, and no
  SQLite file on the shared filesystem is ever written in place or locked;
- ``wal`` layout (local filesystem): the shards are inserted into the SQLite file in one
  transaction, beside the runs that write it;
- one compaction at a time: ``compact.lock`` in the cache directory (created exclusively).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lm_eval_ext.cache.layout import choose
from lm_eval_ext.cache.shard_lines import ShardRead
from lm_eval_ext.cache.shards import read_shard, shard_owner, shard_paths, this_host
from lm_eval_ext.cache.store import DB_FILE, RequestStore
from lm_eval_ext.errors import UserError

LOCK_FILE = "compact.lock"
DEFAULT_STALE_AFTER_S = 24 * 3600.0
_FOLDED_TABLE = "CREATE TABLE IF NOT EXISTS folded (shard TEXT PRIMARY KEY, offset INTEGER NOT NULL)"


@dataclass
class FoldReport:
    num_entries: int = 0
    """entries the SQLite file gained"""
    num_deleted: int = 0
    """entries removed by the deletion asked for (``cache clear``)"""
    deleted_shards: list[str] = field(default_factory=list)
    kept_shards: list[str] = field(default_factory=list)
    """shards whose writer may still append: folded up to here, kept"""
    unreadable: list[str] = field(default_factory=list)
    """``shard@offset`` of lines that did not check out"""


@contextlib.contextmanager
def compaction_lock(cache_dir: Path) -> Iterator[None]:
    path = cache_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        holder = path.read_text(errors="replace").strip() or "unknown"
        raise UserError(f"another `lm-eval-ext cache compact` ({holder}) holds {path}; wait for it, or delete that "
                        "file if its process is gone") from None
    try:
        os.write(fd, f"{socket.gethostname()} pid {os.getpid()} since {time.ctime()}\n".encode())
        os.close(fd)
        yield
    finally:
        path.unlink(missing_ok=True)


def _finished(path: Path, read: ShardRead, stale_after_s: float, now: float) -> bool:
    if read.ended:
        return True
    owner = shard_owner(path)
    if owner is not None and owner[0] == this_host():
        try:
            os.kill(owner[1], 0)
        except ProcessLookupError:
            return True  # its writer died (killed): it will not grow
        except PermissionError:
            pass  # alive, someone else's
    try:
        return now - path.stat().st_mtime > stale_after_s
    except FileNotFoundError:
        return True


def _read_shards(cache_dir: Path, folded: dict[str, int]) -> list[tuple[Path, ShardRead]]:
    reads = []
    for path in shard_paths(cache_dir):
        read = read_shard(path, folded.get(path.name, 0))
        if read is not None:
            reads.append((path, read))
    return reads


def _insert(db: sqlite3.Connection, reads: list[tuple[Path, ShardRead]], offsets: dict[str, int],
            gone: list[str]) -> None:
    """Every shard entry and model (earliest first: an existing key keeps its value) and the offsets."""
    entries = sorted((e for _, read in reads for e in read.entries), key=lambda e: e.created_s)
    db.executemany("INSERT OR IGNORE INTO entries (key, fingerprint, request_type, args_json, value_json, compute_s,"
                   " created_s) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   [(e.key, e.fingerprint, e.request_type, e.args_json, e.value_json, e.compute_s, e.created_s)
                    for e in entries])
    db.executemany("INSERT OR IGNORE INTO models VALUES (?, ?, ?, ?)",
                   [(fp, _label(label), identity, created) for _, read in reads
                    for fp, label, identity, created in read.models])
    db.execute(_FOLDED_TABLE)
    db.executemany("INSERT OR REPLACE INTO folded VALUES (?, ?)", sorted(offsets.items()))
    db.executemany("DELETE FROM folded WHERE shard = ?", [(name,) for name in gone])


def _label(label_json: str) -> str:
    try:
        return str(json.loads(label_json))
    except ValueError:
        return label_json


def _count(store: RequestStore) -> int:
    return store.query("SELECT COUNT(*) FROM entries")[0][0]


def _plan_shards(reads, stale_after_s: float, now: float, report: FoldReport) -> tuple[dict[str, int], list[Path]]:
    offsets, finished = {}, []
    for path, read in reads:
        report.unreadable += [f"{path.name}@{offset}" for offset in read.unreadable]
        if _finished(path, read, stale_after_s, now):
            finished.append(path)
        else:  # read again from the first line that did not check out: it may still be arriving
            offsets[path.name] = read.first_unreadable if read.first_unreadable is not None else read.end_offset
            report.kept_shards.append(path.name)
    return offsets, finished


Deletion = Callable[[RequestStore], int]


@contextlib.contextmanager
def merged_view(cache_dir: Path) -> Iterator[tuple[RequestStore, FoldReport]]:
    """The cache's SQLite file and shards merged into a temporary SQLite file on local disk, open
    read-only (``cache stats|verify|export``); nothing in ``cache_dir`` is written."""
    local = Path(tempfile.mkdtemp(prefix="lm_eval_ext_view_"))
    report = FoldReport()
    try:
        store, _ = build_merged(Path(cache_dir).expanduser(), local, report=report)
        store.close()
        view = RequestStore.open(local, readonly=True)
        try:
            yield view, report
        finally:
            view.close()
    finally:
        shutil.rmtree(local, ignore_errors=True)


def fold(cache_dir: Path, *, stale_after_s: float = DEFAULT_STALE_AFTER_S, delete: Deletion | None = None,
         now: float | None = None) -> FoldReport:
    """Fold every shard of ``cache_dir`` into its SQLite file; ``delete(store)`` then removes entries
    (``cache clear``) and returns how many. Finished shards are deleted afterwards."""
    cache_dir = Path(cache_dir).expanduser()
    if not (cache_dir / DB_FILE).exists() and not shard_paths(cache_dir):
        raise UserError(f"no request cache at {cache_dir} (no {DB_FILE}, no shards); run an evaluation with cache "
                        "enabled first")
    now = time.time() if now is None else now
    report = FoldReport()
    with compaction_lock(cache_dir):
        if choose(cache_dir)[0].layout == "wal":
            finished = _fold_in_place(cache_dir, stale_after_s, now, delete, report)
        else:
            finished = _fold_by_replacing(cache_dir, stale_after_s, now, delete, report)
        for path in finished:  # only once the SQLite file holding their entries is in place
            path.unlink(missing_ok=True)
            report.deleted_shards.append(path.name)
    return report


def _fold_in_place(cache_dir: Path, stale_after_s, now, delete, report) -> list[Path]:
    store = RequestStore.open(cache_dir)
    try:
        reads = _read_shards(cache_dir, store.folded_offsets())
        offsets, finished = _plan_shards(reads, stale_after_s, now, report)
        before = _count(store)
        store.transaction(lambda db: _insert(db, reads, offsets, [p.name for p in finished]))
        report.num_entries = _count(store) - before
        report.num_deleted = delete(store) if delete else 0
    finally:
        store.close()
    return finished


def build_merged(cache_dir: Path, target_dir: Path, *, stale_after_s: float = DEFAULT_STALE_AFTER_S,
                 now: float | None = None, report: FoldReport | None = None) -> tuple[RequestStore, list[Path]]:
    """A new SQLite file in ``target_dir`` (local disk) holding the cache's SQLite file and every
    shard; returns it open and the shards that are finished. ``cache_dir`` is only read."""
    report = report if report is not None else FoldReport()
    now = time.time() if now is None else now
    main_path = cache_dir / DB_FILE
    target = RequestStore.open(target_dir)
    folded: dict[str, int] = {}
    if main_path.exists() and main_path.stat().st_size > 0:
        _recover_wal(cache_dir)
        old = RequestStore.open(cache_dir, readonly=True, immutable=True)
        try:
            folded = old.folded_offsets()
            models = old.query("SELECT fingerprint, label, identity_json, created_s FROM models")
            rows = list(old.iter_entries())
        finally:
            old.close()
        target.transaction(lambda db: (
            db.executemany("INSERT OR IGNORE INTO models VALUES (?, ?, ?, ?)", models),
            db.executemany("INSERT OR IGNORE INTO entries (key, fingerprint, request_type, args_json, value_json,"
                           " compute_s, created_s, hits) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)))
    before = _count(target)
    reads = _read_shards(cache_dir, folded)
    offsets, finished = _plan_shards(reads, stale_after_s, now, report)
    target.transaction(lambda db: _insert(db, reads, offsets, []))
    report.num_entries = _count(target) - before
    return target, finished


def _recover_wal(cache_dir: Path) -> None:
    """A SQLite file left in WAL mode with a WAL beside it (written by a ``wal``-layout run, then
    used as ``shards``): checkpoint it once, so an immutable read sees every committed entry.
    Compaction holds the lock and no ``shards`` run writes this file, so one open is safe."""
    wal = cache_dir / (DB_FILE + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        store = RequestStore.open(cache_dir)
        try:
            store.query("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            store.close()


def _fold_by_replacing(cache_dir: Path, stale_after_s, now, delete, report) -> list[Path]:
    local = Path(tempfile.mkdtemp(prefix="lm_eval_ext_compact_"))
    try:
        target, finished = build_merged(cache_dir, local, stale_after_s=stale_after_s, now=now, report=report)
        try:
            report.num_deleted = delete(target) if delete else 0
            target.query("PRAGMA journal_mode = DELETE")  # one self-contained file, read without locks
        finally:
            target.close()
        staged = cache_dir / f".{DB_FILE}.compact-{os.getpid()}"
        shutil.copyfile(local / DB_FILE, staged)
        with open(staged, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(staged, cache_dir / DB_FILE)
        for side in ("-wal", "-shm"):  # they belonged to the file just replaced
            (cache_dir / (DB_FILE + side)).unlink(missing_ok=True)
        _fsync_dir(cache_dir)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return finished


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
