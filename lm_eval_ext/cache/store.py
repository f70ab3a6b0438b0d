"""The request store: one SQLite database per cache directory, shared by every rank and every run.

Why SQLite in WAL mode: readers never block the writer, a writer waits (busy_timeout) instead of
failing, and a transaction is either fully in the file or not at all, so a SIGKILL between two
batches leaves every finished batch readable. Writes use ``BEGIN IMMEDIATE`` (take the write lock
up front: two processes that both read and then try to write would otherwise deadlock into
"database is locked") and are retried with backoff if the lock still times out.

Values are JSON (never pickle: a foreign cache file must not be able to run code); Python's JSON
writes floats with ``repr`` precision, so a cached loglikelihood is bit-identical to the computed one.

A file that is not ours (garbage, truncated, another program's SQLite, a newer schema) raises
:class:`CacheFileError` naming the file and how to move it aside; the file is never modified.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import struct
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lm_eval_ext.errors import UserError
from lm_eval_ext.files import cache_root

logger = logging.getLogger(__name__)

DB_FILE = "requests.sqlite"
SCHEMA_VERSION = 1
#: Written into the SQLite header (PRAGMA application_id) so foreign SQLite files are recognised.
APPLICATION_ID = 0x4C4D4558  # "LMEX"
BUSY_TIMEOUT_MS = 60_000
WRITE_RETRIES = 8
#: SQLite limits the number of bound parameters per statement (999 on old builds).
SQL_CHUNK = 500
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    fingerprint TEXT PRIMARY KEY, label TEXT NOT NULL, identity_json TEXT NOT NULL,
    created_s REAL NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, request_type TEXT NOT NULL,
    args_json TEXT NOT NULL, value_json TEXT NOT NULL, compute_s REAL NOT NULL,
    created_s REAL NOT NULL, hits INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS entries_by_model ON entries (fingerprint, request_type);
"""


class CacheFileError(UserError):
    """The cache database cannot be trusted; it was left exactly as found."""


@dataclass(frozen=True)
class Entry:
    """One computed request, ready to store. ``compute_s`` is its share of its batch's wall time."""

    key: str
    fingerprint: str
    request_type: str
    args_json: str
    value_json: str
    compute_s: float


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The request store's folder: :func:`lm_eval_ext.files.cache_root`."""
    return cache_root(environ)


_NOT_WRITABLE_HINT = "pass cache_dir=A_WRITABLE_DIR, cache=read to only read it, or cache=off"


def _move_aside_hint(path: Path) -> str:
    return (
        f"move it aside (mv '{path}' '{path}.bad'; also any '{path.name}-wal'/'-shm' next to it) "
        "and rerun to start an empty cache, or pass cache_dir=OTHER_DIR or cache=off in model_args"
    )


def _full_disk_hint(path: Path) -> str:
    return (
        f"the disk holding the request cache {path} is full; free space and rerun (every entry stored "
        "before is kept, and SQLite finishes or rolls back the interrupted write on the next open), or pass "
        "cache_dir=OTHER_DIR or cache=off in model_args"
    )


def _has_wal(path: Path) -> bool:
    wal = path.with_name(path.name + "-wal")
    return wal.exists() and wal.stat().st_size > 0


def check_database_header(path: Path) -> None:
    """Reject files that are not whole SQLite databases, reading only their first 100 bytes.

    SQLite itself would treat a 0-byte file as new and could report truncation only when a missing
    page is read; checking here means a damaged file is refused before SQLite writes anything.
    A main file shorter than its header says is normal while a ``-wal`` file holds the newest
    pages (a full disk or a kill during a checkpoint leaves exactly that): SQLite recovers from the
    WAL on open, so the length check is left to SQLite then.
    """
    size_bytes = path.stat().st_size
    if size_bytes == 0:  # another rank is creating it right now, or we are: SQLite initialises it
        return
    with path.open("rb") as handle:
        header = handle.read(100)
    if not header.startswith(_SQLITE_MAGIC[: len(header)]) or len(header) < 16:
        raise CacheFileError(f"cache database {path} is not an SQLite file; " + _move_aside_hint(path))
    if len(header) < 100:
        raise CacheFileError(f"cache database {path} is truncated ({size_bytes} bytes); " + _move_aside_hint(path))
    (page_size,) = struct.unpack(">H", header[16:18])
    page_size = 65536 if page_size == 1 else page_size
    (page_count,) = struct.unpack(">I", header[28:32])
    if page_count and size_bytes < page_size * page_count and not _has_wal(path):
        raise CacheFileError(
            f"cache database {path} is truncated ({size_bytes} bytes, its header says "
            f"{page_size * page_count}); " + _move_aside_hint(path)
        )


def _connect(path: Path, readonly: bool, immutable: bool = False) -> sqlite3.Connection:
    """Read-only opens never create side files where they can be avoided: ``mode=ro`` needs to
    create ``-shm`` for a WAL database, so on read-only storage fall back to ``immutable=1``
    (SQLite then reads the main file as it is, without locks). ``immutable``: always so (the
    sharded layout's folded file, which is replaced whole and never written in place)."""
    if not readonly:
        return sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    uri = path.resolve().as_uri()
    writable_dir = os.access(path.parent, os.W_OK)
    has_shm = path.with_name(path.name + "-shm").exists()
    flags = "mode=ro" if (writable_dir or has_shm) and not immutable else "immutable=1"
    try:
        connection = sqlite3.connect(f"{uri}?{flags}", uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return connection
    except sqlite3.OperationalError:
        if flags == "immutable=1":
            raise
        logger.info("request cache %s: read-only open failed; reading it as immutable", path)
        return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)


class RequestStore:
    """Open with :meth:`open`; every method is one short transaction (or one read)."""

    def __init__(self, path: Path, connection: sqlite3.Connection | None, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._db = connection

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, cache_dir: str | os.PathLike, *, create: bool = True, readonly: bool = False,
             immutable: bool = False) -> RequestStore:
        """``readonly=True`` (``cache=read``, ``cache stats``/``export``): nothing is created or
        written, not even an empty file's schema, so a read-only copy of a cache can be read.
        ``immutable`` (read-only): no locks, no side files (see :func:`_connect`)."""
        directory = Path(cache_dir).expanduser()
        path = directory / DB_FILE
        if directory.exists() and not directory.is_dir():
            raise UserError(f"cache directory {directory} is a file, not a directory; "
                            "pass cache_dir=A_DIRECTORY or cache=off in model_args")
        if (not path.exists() or path.stat().st_size == 0) and (readonly or not create):
            what = "is an empty file" if path.exists() else "does not exist"
            raise UserError(f"no request cache at {path} (it {what}); run an evaluation with cache enabled first")
        if not readonly:
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"cannot create cache directory {directory} ({exc.strerror}); "
                                + _NOT_WRITABLE_HINT) from None
        if path.exists():
            check_database_header(path)
        store = cls(path, None, readonly=readonly)
        store._db = store._guarded(_connect, path, readonly, immutable)
        store._prepare_when_free()
        return store

    def _prepare_when_free(self) -> None:
        """:meth:`_prepare`, retried with backoff while processes racing to create or open the same
        file hold it (SQLite answers some of those races "database is locked" at once, whatever the
        busy timeout: the switch to WAL needs the file to itself). Every step of it is idempotent."""
        for attempt in range(WRITE_RETRIES):
            try:
                return self._guarded(self._prepare)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == WRITE_RETRIES - 1:
                    raise
                logger.warning("cache %s busy while opening, retrying (%s)", self.path, exc)
                time.sleep(0.05 * 2**attempt)

    def _prepare(self) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app_id not in (0, APPLICATION_ID) or (tables and "meta" not in tables):
            raise CacheFileError(
                f"cache database {self.path} was written by another program (tables: "
                f"{', '.join(sorted(tables)) or 'none'}); " + _move_aside_hint(self.path)
            )
        if (app_id == 0 or not tables) and self.readonly:
            raise UserError(f"no request cache at {self.path} (it holds no tables); "
                            "run an evaluation with cache enabled first")
        if app_id == 0 or not tables:
            self._initialise()
        self._check_schema_version()
        if self.readonly:
            return
        # WAL is persistent in the file; NORMAL sync is crash-safe for process kills under WAL.
        if self._db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":  # only the first opener switches
            self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")

    def _initialise(self) -> None:
        def create(db: sqlite3.Connection) -> None:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            db.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?), ('created_by', 'lm_eval_ext')",
                (str(SCHEMA_VERSION),),
            )
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")

        self._write(create)

    def _check_schema_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        version = int(row[0]) if row and str(row[0]).isdigit() else None
        if version != SCHEMA_VERSION:
            raise CacheFileError(
                f"cache database {self.path} has schema version {version}, this lm-eval-ext reads "
                f"version {SCHEMA_VERSION}; " + _move_aside_hint(self.path)
            )

    # ------------------------------------------------------------------ plumbing

    def _guarded(self, operation, *args):
        """Run ``operation``; SQLite corruption becomes a :class:`CacheFileError`, never a traceback."""
        try:
            return operation(*args)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc):
                raise UserError(_full_disk_hint(self.path)) from None
            if isinstance(exc, sqlite3.OperationalError) and ("readonly" in str(exc) or "unable to open" in str(exc)):
                hint = "pass cache_dir=A_READABLE_DIR or cache=off" if self.readonly else _NOT_WRITABLE_HINT
                verb = "read" if self.readonly else "write"
                raise UserError(f"cannot {verb} the request cache {self.path} ({exc}); {hint}") from None
            raise CacheFileError(
                f"cache database {self.path} is damaged or not a cache ({exc}); " + _move_aside_hint(self.path)
            ) from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise UserError(_full_disk_hint(self.path)) from None
            raise

    def _write(self, body) -> None:
        """One ``BEGIN IMMEDIATE`` transaction, retried with backoff if the lock stays busy."""
        for attempt in range(WRITE_RETRIES):
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or attempt == WRITE_RETRIES - 1:
                    raise
                logger.warning("cache %s busy, retrying (%s)", self.path, exc)
                time.sleep(0.05 * 2**attempt)
                continue
            try:
                body(self._db)
                self._db.execute("COMMIT")
                return
            except BaseException:
                if self._db.in_transaction:  # SQLite already rolled back after e.g. SQLITE_FULL
                    self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._db.close()

    def transaction(self, body) -> None:
        """``body(connection)`` in one write transaction (``cache compact`` folds shards with it)."""
        self._guarded(self._write, body)

    # ------------------------------------------------------------------ reads and writes

    def register_model(self, fingerprint: str, label: str, identity_json: str) -> None:
        self._guarded(self._write, lambda db: db.execute(
            "INSERT OR IGNORE INTO models VALUES (?, ?, ?, ?)", (fingerprint, label, identity_json, time.time())
        ))

    def get_many(self, keys: Sequence[str]) -> dict[str, tuple[str, float]]:
        """``{key: (value_json, compute_s)}`` for the keys that are stored."""
        return self._guarded(self._get_many, list(dict.fromkeys(keys)))

    def _get_many(self, keys: list[str]) -> dict[str, tuple[str, float]]:
        found = {}
        for start in range(0, len(keys), SQL_CHUNK):
            chunk = keys[start : start + SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, value_json, compute_s FROM entries WHERE key IN ({marks})", chunk
            )
            found.update((key, (value, compute_s)) for key, value, compute_s in rows)
        return found

    def count_hits(self, keys: Iterable[str]) -> None:
        counts: dict[str, int] = {}
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        if counts:
            self._guarded(self._write, lambda db: db.executemany(
                "UPDATE entries SET hits = hits + ? WHERE key = ?", [(n, k) for k, n in counts.items()]
            ))

    def put_many(self, entries: Sequence[Entry]) -> None:
        """Store a finished batch in one transaction; an existing key keeps its first value."""
        if not entries:
            return
        now = time.time()
        rows = [
            (e.key, e.fingerprint, e.request_type, e.args_json, e.value_json, e.compute_s, now)
            for e in entries
        ]
        self._guarded(self._write, lambda db: db.executemany(
            "INSERT OR IGNORE INTO entries (key, fingerprint, request_type, args_json, value_json,"
            " compute_s, created_s) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
        ))

    # ------------------------------------------------------------------ inspection (CLI)

    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        return self._guarded(lambda: self._db.execute(sql, params).fetchall())

    def iter_entries(self, fingerprint: str | None = None) -> Iterator[tuple]:
        """``(key, fingerprint, request_type, args_json, value_json, compute_s, created_s, hits)``."""
        where, params = ("WHERE fingerprint = ?", (fingerprint,)) if fingerprint else ("", ())
        cursor = self._guarded(lambda: self._db.execute(
            "SELECT key, fingerprint, request_type, args_json, value_json, compute_s, created_s, hits"
            f" FROM entries {where} ORDER BY created_s, key", params
        ))
        while True:
            rows = self._guarded(cursor.fetchmany, 1000)
            if not rows:
                return
            yield from rows

    def delete(self, *, fingerprints: Sequence[str] | None = None, before_s: float | None = None) -> int:
        """Delete entries (all, of some models, or created before a time); returns how many."""
        clauses, params = [], []
        if fingerprints is not None:
            clauses.append(f"fingerprint IN ({','.join('?' * len(fingerprints))})")
            params.extend(fingerprints)
        if before_s is not None:
            clauses.append("created_s < ?")
            params.append(before_s)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        deleted = []

        def body(db: sqlite3.Connection) -> None:
            deleted.append(db.execute(f"DELETE FROM entries {where}", params).rowcount)
            db.execute("DELETE FROM models WHERE fingerprint NOT IN (SELECT DISTINCT fingerprint FROM entries)")

        self._guarded(self._write, body)
        return deleted[0]

    def folded_offsets(self) -> dict[str, int]:
        """``{shard file name: bytes already folded into this file}`` (``lm-eval-ext cache compact``)."""
        if not self.query("SELECT name FROM sqlite_master WHERE type='table' AND name='folded'"):
            return {}
        return dict(self.query("SELECT shard, offset FROM folded"))

    def integrity_errors(self) -> list[str]:
        """Full SQLite integrity check; ``[]`` when the file is sound."""
        rows = self._guarded(lambda: self._db.execute("PRAGMA integrity_check").fetchall())
        return [] if rows == [("ok",)] else [str(row[0]) for row in rows]
