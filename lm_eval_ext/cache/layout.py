"""EDGE: which layout a cache directory has (placeholder, extended below)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from lm_eval_ext.cache.store import DB_FILE


def count_entries(cache_dir: Path) -> int:
    path = Path(cache_dir) / DB_FILE
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        except sqlite3.OperationalError:
            return 0
