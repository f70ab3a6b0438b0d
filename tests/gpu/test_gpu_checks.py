"""What only a CUDA device can show (run by benchmarks/gpu/run_gpu_suite.sh; skipped without CUDA).

bf16 against stock per sample, ``max_batch_tokens=auto`` probing with real shapes and its cache, a
real CUDA out-of-memory recovered with equal results, and vllm_ext against stock vllm when vLLM
imports. Written without a GPU to run them on (no session so far had one): sized for the tiny
2-layer model so that all of them take well under a minute on one GPU.
"""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")

from tests.helpers import assert_same_samples, evaluate, per_sample  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
TASKS = ["ext_arith_mc", "ext_prose_rolling"]


def _args(model, dtype: str, extra: str = "") -> str:
    return f"pretrained={model},dtype={dtype},device=cuda" + (f",{extra}" if extra else "")


def test_bf16_matches_stock_per_sample(tiny_model_path, task_manager):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    stock = evaluate("hf", _args(tiny_model_path, "bfloat16"), TASKS, task_manager, batch_size=8, limit=16)
    ours = evaluate("hf_ext", _args(tiny_model_path, "bfloat16", "cache=off"), TASKS, task_manager,
                    batch_size=8, limit=16)
    # bf16 keeps ~3 significant digits and sums in another order under other batch shapes
    assert_same_samples(per_sample(stock), per_sample(ours), atol=5e-2, rtol=1e-2)


def _probe_cache() -> dict:
    path = os.path.join(os.environ["LM_EVAL_EXT_CACHE_DIR"], "probe_cache.json")  # conftest: one per test
    with open(path) as handle:
        return json.load(handle)


def test_auto_budget_probes_real_shapes_once_and_is_remembered(tiny_model_path, task_manager):
    stock = evaluate("hf", _args(tiny_model_path, "float32"), TASKS, task_manager, batch_size=8, limit=16)
    first = evaluate("hf_ext", _args(tiny_model_path, "float32", "cache=off,max_batch_tokens=auto"), TASKS,
                     task_manager, batch_size=8, limit=16)
    probes = _probe_cache()
    assert probes and all('"device": "cuda' in key for key in probes)
    second = evaluate("hf_ext", _args(tiny_model_path, "float32", "cache=off,max_batch_tokens=auto"), TASKS,
                      task_manager, batch_size=8, limit=16)
    assert _probe_cache() == probes  # the second run read the budgets instead of probing again
    budgets = {k: v["budget_tokens"] for k, v in first["config"]["cost_report"].items()}
    assert budgets == {k: v["budget_tokens"] for k, v in second["config"]["cost_report"].items()}
    assert_same_samples(per_sample(stock), per_sample(first), atol=1e-4)


def test_real_cuda_out_of_memory_is_recovered_with_equal_results(tiny_model_path, task_manager):
    stock = evaluate("hf", _args(tiny_model_path, "float32"), ["ext_prose_rolling"], task_manager,
                     batch_size=4, limit=12)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    # a budget of 1M tokens forces batches far larger than the 64 MiB the allocator may add beyond
    # what is in use now, so the first batches really run out of memory and must be split
    allowed = torch.cuda.memory_reserved(0) + 64 * 2**20
    torch.cuda.set_per_process_memory_fraction(allowed / total, 0)
    try:
        ours = evaluate("hf_ext", _args(tiny_model_path, "float32", "cache=off,max_batch_tokens=1048576"),
                        ["ext_prose_rolling"], task_manager, batch_size=64, limit=12)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    retries = sum(v["oom_retries"] for v in ours["config"]["cost_report"].values())
    assert retries > 0, "the memory cap did not force an out-of-memory error; lower it"
    assert_same_samples(per_sample(stock), per_sample(ours), atol=1e-4)


def test_vllm_ext_matches_stock_vllm(tiny_model_path, task_manager):
    pytest.importorskip("vllm")
    args = f"pretrained={tiny_model_path},dtype=float32,enforce_eager=True,gpu_memory_utilization=0.3"
    stock = evaluate("vllm", args, ["ext_arith_mc"], task_manager, batch_size="auto", limit=16)
    ours = evaluate("vllm_ext", args + ",cache=off", ["ext_arith_mc"], task_manager, batch_size="auto", limit=16)
    assert_same_samples(per_sample(stock), per_sample(ours), atol=1e-3)
