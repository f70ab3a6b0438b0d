"""Thin lm-eval models. Each imports its backend lazily and names the pip extra when missing."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"lm-eval-ext needs '{module}' for this model; install it with "
            f"pip install 'lm-eval-ext[{extra}]' ({exc})"
        ) from exc
