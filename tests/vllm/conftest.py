"""Fixtures for the vLLM tests: the tiny vLLM-compatible model, the task manager, stock results."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.vllm.support import ENGINE_ARGS, ROOT

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


@pytest.fixture(scope="session")
def stock_samples(tiny_vllm_model_path, task_manager):
    """Stock lm-eval ``vllm`` with TP 1: the reference every layout and mode must reproduce."""
    import gc

    from lm_eval.models.vllm_causallms import VLLM

    from tests.vllm.evaluation import evaluate_samples

    lm = VLLM(pretrained=tiny_vllm_model_path, tensor_parallel_size=1, **ENGINE_ARGS)
    try:
        return evaluate_samples(lm, task_manager)
    finally:
        lm.model.llm_engine.engine_core.shutdown()
        del lm.model
        gc.collect()
