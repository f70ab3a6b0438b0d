"""hf_ext builds the planned layout on CPU and scores exactly like stock ``hf`` (float32, 1e-5).

CPU-buildable strategies: ``single`` (auto on a CPU machine) and ``cpu_offload`` (accelerate puts
what fits the RAM cap on CPU and the rest on disk); ``data_parallel`` over two processes is in
tests/dist. Splits over GPUs are in tests/gpu. All three shipped task kinds run: multiple choice,
generation and rolling loglikelihood.
"""

from __future__ import annotations

import pytest

from tests.helpers import assert_same_samples, per_sample

TASKS = ["ext_arith_mc", "ext_copy_gen", "ext_prose_rolling"]
LIMIT = 6


def _evaluate(lm, task_manager):
    from lm_eval import simple_evaluate

    return simple_evaluate(model=lm, tasks=TASKS, task_manager=task_manager, limit=LIMIT,
                           log_samples=True, bootstrap_iters=0)


@pytest.fixture(scope="module")
def stock(tiny_model_path, task_manager):
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(tiny_model_path), device="cpu", dtype="float32", batch_size=4)
    return per_sample(_evaluate(lm, task_manager))


@pytest.mark.parametrize("model_args, strategy, on_disk", [
    ({}, "single", False),
    ({"strategy": "single"}, "single", False),
    ({"strategy": "cpu_offload", "max_cpu_memory": "500000"}, "cpu_offload", True),
])
def test_layout_matches_stock_hf(stock, tiny_model_path, task_manager, tmp_path, model_args, strategy, on_disk):
    from lm_eval_ext.hf.adapter import HfExtLM

    lm = HfExtLM(pretrained=str(tiny_model_path), device="cpu", dtype="float32", batch_size=4,
                 offload_folder=str(tmp_path / "offload"), **model_args)
    assert lm._layout.plan.strategy.value == strategy
    device_map = getattr(lm.model, "hf_device_map", {"": "cpu"})
    assert ("disk" in device_map.values()) == on_disk and "cpu" in device_map.values()
    results = _evaluate(lm, task_manager)
    assert len(stock) == LIMIT * len(TASKS)
    assert_same_samples(stock, per_sample(results), atol=1e-5)
    recorded = results["config"]["lm_eval_ext_plan"]
    assert recorded["strategy"] == strategy and recorded["weights_bytes"] == lm._layout.plan.weights_bytes
    if on_disk:
        assert results["config"]["lm_eval_ext_max_memory"] == {"cpu": 500000}


def test_parallelize_on_cpu_is_refused_with_the_fix(tiny_model_path):
    from lm_eval_ext.hf.adapter import HfExtLM
    from lm_eval_ext.errors import UserError

    # names what the user typed (parallelize), not the strategy it maps to (issue: "parallelize=True on CPU")
    with pytest.raises(UserError, match=r"parallelize=True splits a model over GPUs, and none is visible; drop "
                                        r"parallelize \(hf_ext plans the CPU run itself\), or pass strategy=cpu_offload"):
        HfExtLM(pretrained=str(tiny_model_path), device="cpu", dtype="float32", parallelize=True)


def test_unknown_strategy_is_refused(tiny_model_path):
    from lm_eval_ext.hf.adapter import HfExtLM
    from lm_eval_ext.errors import ConfigError

    with pytest.raises(ConfigError, match="strategy='tensor_parallel' is not valid; use one of: auto, single"):
        HfExtLM(pretrained=str(tiny_model_path), strategy="tensor_parallel")
