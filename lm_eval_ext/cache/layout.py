"""EDGE: which layout a cache directory's request store takes, and opening it.

``LM_EVAL_EXT_CACHE_LAYOUT`` = ``auto`` (default: by the filesystem type of the cache directory, read
from ``/proc/self/mountinfo``; see :mod:`lm_eval_ext.cache.mounts`), ``wal`` or ``shards``.

- ``wal``: one SQLite file in WAL mode (``cache/store.py``), read and written by every process;
- ``shards``: the folded SQLite file read without locks, each writer process its own shard file
  (``cache/shards.py``).

Shard files left in a folder are read in either layout, so a cache written on a cluster's shared
filesystem and copied to a laptop keeps every entry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from lm_eval_ext.cache.mounts import LAYOUTS, LayoutChoice, choose_layout, filesystem_of, is_network, parse_mountinfo
from lm_eval_ext.cache.shards import ShardedStore, ShardWriter, shard_paths
from lm_eval_ext.cache.store import DB_FILE, RequestStore
from lm_eval_ext.errors import UserError

logger = logging.getLogger(__name__)

LAYOUT_ENV = "LM_EVAL_EXT_CACHE_LAYOUT"
MOUNTINFO = "/proc/self/mountinfo"


def filesystem_type(path: Path, mountinfo: str = MOUNTINFO) -> str | None:
    """The type of the filesystem that holds ``path`` (or would: its nearest existing folder)."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        text = Path(mountinfo).read_text()
    except OSError:  # not Linux: no way to tell, and no cluster filesystem known either
        return None
    return filesystem_of(str(path.resolve()), parse_mountinfo(text))


def requested_layout(environ: Mapping[str, str] = os.environ) -> str:
    value = environ.get(LAYOUT_ENV, "").strip().lower() or "auto"
    if value not in LAYOUTS:
        raise UserError(f"{LAYOUT_ENV}={environ[LAYOUT_ENV]!r} is not a cache layout; use auto (by filesystem), "
                        "wal (one SQLite file, one host) or shards (one file per writer process, any filesystem)")
    return value


def choose(cache_dir: Path, environ: Mapping[str, str] = os.environ) -> tuple[LayoutChoice, str | None]:
    fstype = filesystem_type(cache_dir)
    return choose_layout(requested_layout(environ), fstype), fstype


def store_exists(cache_dir: Path) -> bool:
    """Something to read: the SQLite file (not empty) or a shard file."""
    path = Path(cache_dir).expanduser() / DB_FILE
    return (path.exists() and path.stat().st_size > 0) or bool(shard_paths(Path(cache_dir).expanduser()))


def open_store(cache_dir: Path, *, readonly: bool = False,
               environ: Mapping[str, str] = os.environ) -> tuple[RequestStore | ShardedStore, LayoutChoice]:
    """The store a run reads and writes (``readonly``: reads only, creates nothing)."""
    cache_dir = Path(cache_dir).expanduser()
    choice, fstype = choose(cache_dir, environ)
    has_shards = bool(shard_paths(cache_dir))
    if choice.layout == "wal" and not has_shards:
        return RequestStore.open(cache_dir, readonly=readonly), choice
    if choice.layout == "wal":  # shards from an earlier run on a shared filesystem: read them too
        return ShardedStore(cache_dir, RequestStore.open(cache_dir, readonly=readonly), writes_main=not readonly), choice
    if cache_dir.exists() and not cache_dir.is_dir():
        raise UserError(f"cache directory {cache_dir} is a file, not a directory; "
                        "pass cache_dir=A_DIRECTORY or cache=off in model_args")
    main_path = cache_dir / DB_FILE
    main = None
    if main_path.exists() and main_path.stat().st_size > 0:
        main = RequestStore.open(cache_dir, readonly=True, immutable=is_network(fstype))
    return ShardedStore(cache_dir, main, writer=None if readonly else ShardWriter(cache_dir)), choice


def count_entries(cache_dir: Path) -> int:
    """Distinct entries a run would find in ``cache_dir``, in either layout (read only; for checks)."""
    cache_dir = Path(cache_dir)
    main = None
    if (cache_dir / DB_FILE).exists() and (cache_dir / DB_FILE).stat().st_size > 0:
        try:
            main = RequestStore.open(cache_dir, readonly=True)
        except UserError:  # another process is creating it: no tables yet
            main = None
    try:
        keys = {row[0] for row in main.query("SELECT key FROM entries")} if main is not None else set()
        if shard_paths(cache_dir):
            keys |= ShardedStore(cache_dir, main).keys()
    finally:
        if main is not None:
            main.close()
    return len(keys)
