"""Answer a fully cached ``hf_ext`` run without importing torch or transformers.

Why: a re-run whose every request is in the request cache loads no weights, but building
``hf_ext`` still imports torch, transformers and lm-eval's HFLM (3-5 s on a small CPU), only to
compute the model's fingerprint from its tokenizer and config. Here a completed run leaves a
*memo*: the fingerprint, plus what lm-eval reads from the model object for its results (tokenizer
special tokens, max length, model info). A later run with the same memo key reads the memo
instead of building the backend; the first request it cannot answer from the cache builds the
real backend, which then serves the whole run.

The memo key covers every input of the fingerprint: all model_args as given, every file of the
checkpoint folder (relative path, size, mtime in ns), the versions of the packages that load it
and lm-eval-ext's own source files. A changed file, argument or package means a new key, so the
memo can never vouch for a model it did not see. Only plain single-process runs of a local
checkpoint folder take this path (no launcher ranks, no adapters, a cache mode that reads).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from lm_eval_ext.files import write_json_atomic
from lm_eval_ext.plan.dry_run import is_dry_run
from lm_eval_ext.plan.launch_env import read_launch_env

logger = logging.getLogger(__name__)

MEMO_DIR = "fast_path"
_VERSIONED = ("lm_eval", "transformers", "tokenizers", "torch", "accelerate", "lm-eval-ext")
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the whole lm_eval_ext package


def _files(folder: Path, suffix: str = "") -> list[tuple[str, int, int]]:
    listing = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(n for n in names if n.endswith(suffix)):
            stat = os.stat(os.path.join(root, name))
            listing.append((os.path.relpath(os.path.join(root, name), folder), stat.st_size, stat.st_mtime_ns))
    return listing


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def eligible(model_args: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> bool:
    """Single process, a cache mode that reads, a local checkpoint folder, no adapters, not a dry
    run (which must reach the build description: :mod:`lm_eval_ext.plan.dry_run`)."""
    if is_dry_run(environ) or read_launch_env(environ).is_distributed:
        return False
    if str(model_args.get("cache", "readwrite")) not in {"read", "readwrite"}:
        return False
    if any(model_args.get(name) for name in ("peft", "delta", "gguf_file", "revision", "subfolder")):
        return False
    return Path(str(model_args.get("pretrained", ""))).expanduser().is_dir()


def memo_key(model_args: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> str | None:
    """The memo key of these model_args, or ``None`` when the run cannot take the fast path."""
    if not eligible(model_args, environ):
        return None
    folder = Path(str(model_args["pretrained"])).expanduser().resolve()
    described = {
        "model_args": {str(k): str(v) for k, v in sorted(model_args.items())},
        "folder": str(folder),
        "files": _files(folder),
        "versions": _versions(),
        "code": _files(_PACKAGE_DIR, ".py"),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def read_memo(cache_dir: Path, key: str) -> dict[str, Any] | None:
    try:
        memo = json.loads((cache_dir / MEMO_DIR / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return memo if isinstance(memo, dict) and isinstance(memo.get("fingerprint"), str) else None


def write_memo(cache_dir: Path, key: str, memo: Mapping[str, Any]) -> None:
    """Atomic (temporary file, then rename), so a reader never sees half a memo."""
    folder = cache_dir / MEMO_DIR
    try:
        write_json_atomic(folder / f"{key}.json", memo, sort_keys=True, default=str)
    except OSError as exc:  # a read-only cache only costs the next run its fast path
        logger.debug("could not write fast-path memo in %s: %s", folder, exc)
