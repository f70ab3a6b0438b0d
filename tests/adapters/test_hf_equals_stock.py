"""hf_ext gives the same per-sample results as stock `hf` on every shipped task (float32).

Tolerance: loglikelihoods within 1e-5 absolute (rolling sums: 1e-6 relative, see helpers);
generations, is_greedy and exact-match metrics identical.
Both models run in this test, on the same tiny model and data.
"""

from __future__ import annotations

import pytest

from tests.helpers import assert_same_samples, evaluate, metrics, per_sample

TASKS = ["ext_arith_mc", "ext_copy_gen", "ext_prose_rolling"]


@pytest.fixture(scope="module")
def stock_results(tiny_model_path, task_manager):
    return evaluate("hf", f"pretrained={tiny_model_path},dtype=float32,device=cpu", TASKS,
                    task_manager, batch_size=4)


@pytest.mark.parametrize("batch_size", [1, 8])
def test_hf_ext_matches_stock_per_sample(tiny_model_path, task_manager, stock_results, batch_size):
    ours = evaluate("hf_ext", f"pretrained={tiny_model_path}", TASKS, task_manager,
                    batch_size=batch_size)
    assert_same_samples(per_sample(stock_results), per_sample(ours), atol=1e-5)
    assert metrics(ours) == pytest.approx(metrics(stock_results), rel=1e-6, abs=1e-6)
    assert ours["config"]["lm_eval_ext_model"] == "hf_ext"  # get_model_info lands in config


def test_dtype_auto_is_float32_on_cpu(tiny_model_path):
    from lm_eval_ext.hf.adapter import HfExtLM

    lm = HfExtLM(pretrained=str(tiny_model_path))
    assert str(lm.model.dtype) == "torch.float32" and lm.device.type == "cpu"
