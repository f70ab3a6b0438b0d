"""Shared by the planner tests: real architectures' config.json files, sized on the meta device.

Parameter counts are cached in a per-session temporary folder (never the user's ~/.cache), so the
first test that needs a model pays the transformers import once.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "configs"

os.environ.setdefault("LM_EVAL_EXT_CACHE_DIR", tempfile.mkdtemp(prefix="lm_eval_ext_test_cache_"))
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")


@functools.lru_cache(maxsize=None)
def facts(name: str, dtype: str = "auto"):
    from lm_eval_ext.plan.model_facts import load_model_facts

    return load_model_facts(str(CONFIGS / name), dtype)
