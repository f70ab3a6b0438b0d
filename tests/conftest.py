"""Shared fixtures. Nothing here downloads: models are built locally (scripts/build_models.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = ROOT / "tasks"
SHARED_DATA = ROOT.parent / "shared" / "data"

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_name] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
#: the environment as the session began, for children that must not inherit what earlier tests
#: changed in os.environ (e.g. vllm_ext's CPU thread binding for tensor parallel)
SESSION_START_ENV = dict(os.environ)

sys.path.insert(0, str(ROOT / "scripts"))


@pytest.fixture(autouse=True)
def _isolated_request_cache(tmp_path_factory, monkeypatch):
    """hf_ext caches requests by default: give every test its own empty cache directory, so no
    test reads the user's cache or another test's answers (which would make comparisons vacuous)."""
    monkeypatch.setenv("LM_EVAL_EXT_CACHE_DIR", str(tmp_path_factory.mktemp("request-cache")))


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The 2-layer random Llama; built in seconds if `make models` has not run."""
    from build_models import ensure_model

    return ensure_model("tiny-llama")


@pytest.fixture(scope="session")
def tasks_dir() -> Path:
    return TASKS_DIR


@pytest.fixture(scope="session")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(TASKS_DIR)], include_defaults=False)


@pytest.fixture
def scratch_env(tmp_path) -> dict:
    """Environment for subprocesses: offline, quiet, with caches inside tmp_path."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        LM_EVAL_EXT_CACHE_DIR=str(tmp_path / "ext-cache"),
        PYTHONUNBUFFERED="1",
    )
    return env
