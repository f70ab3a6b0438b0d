"""Where the shipped task YAMLs live: ``lm_eval_ext/_tasks`` inside a wheel, ``tasks/`` in a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_tasks_dir() -> Path:
    for candidate in (_PACKAGE / "_tasks", _PACKAGE.parent / "tasks"):
        if (candidate / "ext_data.py").is_file():
            return candidate
    raise FileNotFoundError(f"lm-eval-ext's task folder is missing (looked in {_PACKAGE})")
