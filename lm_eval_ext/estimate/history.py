"""EDGE (file system, the machine): what finished runs measured, for the next estimate.

Each finished ``hf_ext`` / ``vllm_ext`` run leaves one record in ``<cache root>/estimate_history.json``
(:func:`lm_eval_ext.files.cache_root`, written atomically), keyed by

- the model: the request cache's fingerprint (weights, dtype, tokenizer, output settings:
  :mod:`lm_eval_ext.cache.fingerprint`), so another model, dtype or tokenizer never matches;
- the hardware: :func:`hardware_key`, a digest of what decides speed here (CPU model and the cores
  this process may use, or each visible GPU's name and memory), so another machine never matches;
- the backend (``hf``, ``vllm``) and the layout's replica count.

A record holds, per request type, the computed tokens and seconds of the run (its rates), and per
task the same plus the mean tokens generated per request. :func:`latest` returns the newest record
for a key; older ones are kept (a few per key) so a bad run does not erase a good one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lm_eval_ext.files import cache_root, read_json, write_json_atomic

logger = logging.getLogger(__name__)

HISTORY_FILE = "estimate_history.json"
#: records kept per (model, hardware, backend, replicas) key, newest last
KEEP_PER_KEY = 4


def history_path(environ: Mapping[str, str] = os.environ) -> Path:
    return cache_root(environ) / HISTORY_FILE


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_description(device: str = "cpu") -> dict[str, Any]:
    """What decides speed on this machine, for ``device`` (``cpu`` or ``cuda``)."""
    from lm_eval_ext.plan.detect import detect_gpus, num_cpu_cores

    described: dict[str, Any] = {"cpu": _cpu_model(), "cores": num_cpu_cores()}
    if device.startswith("cuda"):
        described["gpus"] = [(g.name, g.total_bytes) for g in detect_gpus()]
    return described


def hardware_key(description: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def record_key(model_fingerprint: str, hardware: str, backend: str, num_replicas: int) -> str:
    return f"{model_fingerprint[:32]}:{hardware}:{backend}:{num_replicas}"


def latest(key: str, environ: Mapping[str, str] = os.environ) -> dict[str, Any] | None:
    """The newest record for ``key``, or None."""
    records = (read_json(history_path(environ), {}) or {}).get(key) or []
    return records[-1] if isinstance(records, list) and records else None


def remember(key: str, record: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> None:
    """Append ``record`` (stamped with the time) under ``key``; a cache root that cannot be written
    costs the next estimate its history, never this run its results."""
    path = history_path(environ)
    store = read_json(path, {}) or {}
    records = [r for r in store.get(key, []) if isinstance(r, dict)]
    records.append({**record, "finished_unix_s": round(time.time())})
    store[key] = records[-KEEP_PER_KEY:]
    try:
        write_json_atomic(path, store, indent=1, sort_keys=True)
    except OSError as exc:
        logger.warning("run history not written to %s: %s", path, exc)
