"""EDGE (file system): where lm-eval-ext keeps its files, and the one way it writes JSON.

Every small JSON file the project keeps (fingerprint memo, fast-path memo, probe budgets,
parameter counts) can be read by another rank while it is written, so every one is written the
same way: a temporary file in the same folder, then ``os.replace`` (atomic on POSIX), so a reader
sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def cache_root(environ: Mapping[str, str] = os.environ) -> Path:
    """``$LM_EVAL_EXT_CACHE_DIR``, else ``$XDG_CACHE_HOME/lm_eval_ext``, else ``~/.cache/lm_eval_ext``."""
    if environ.get("LM_EVAL_EXT_CACHE_DIR"):
        return Path(environ["LM_EVAL_EXT_CACHE_DIR"]).expanduser()
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lm_eval_ext"


def write_json_atomic(path: Path, value: Any, **dump_kwargs: Any) -> None:
    """Write ``value`` as JSON to ``path`` atomically (creates the folder); raises OSError.

    The temporary file is removed when the write fails (a full disk leaves nothing behind).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(value, handle, **dump_kwargs)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when it is missing or unreadable (never raises)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default
