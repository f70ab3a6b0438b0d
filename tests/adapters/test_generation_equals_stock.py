"""hf_ext's greedy generation, with and without prompt-lookup drafts, gives stock ``hf``'s strings.

Stock and hf_ext run in the same test, through lm-eval, on the shipped ``ext_copy_gen`` and on
GSM8K docs (lm-eval's own gsm8k definition over ../shared/data; skipped where the data is not),
with the tiny model and, where it is built, SmolLM2-135M (real text: drafts get accepted).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.adapters.conftest import TASKS_DIR

from benchmarks.lib import gsm8k

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = ROOT / ".models" / "smollm2-135m"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gsm8k_include(tmp_path_factory) -> str:
    data_dir = gsm8k.find_data_dir(ROOT)
    if data_dir is None:
        pytest.skip("GSM8K data not found (../shared/data/gsm8k or $BENCH_DATA_DIR)")
    return str(gsm8k.write_local_task(data_dir, tmp_path_factory.mktemp("gsm8k")))


def generations(model: str, lm, task: str, limit: int, include: list[str]) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include, include_defaults=False)
    out = simple_evaluate(model=lm, tasks=[task], task_manager=manager, log_samples=True, limit=limit,
                          verbosity="WARNING")
    return {s["doc_id"]: s["resps"] for s in out["samples"][task]}


def compare_with_stock(model_path: str, task: str, limit: int, include: list[str]) -> None:
    from lm_eval.models.huggingface import HFLM

    from lm_eval_ext.hf.adapter import HfExtLM

    stock = generations(model_path, HFLM(pretrained=model_path, batch_size=4, device="cpu", dtype="float32"),
                        task, limit, include)
    assert any(r[0][0] for r in stock.values()), "stock generated nothing: the comparison would be vacuous"
    for drafts in (0, 8):
        lm = HfExtLM(pretrained=model_path, batch_size="auto", device="cpu", dtype="float32", cache="off",
                     prompt_lookup_num_tokens=drafts)
        assert generations(model_path, lm, task, limit, include) == stock, f"prompt_lookup_num_tokens={drafts}"


def test_copy_task_equals_stock(tiny_model_path):
    compare_with_stock(str(tiny_model_path), "ext_copy_gen", 16, [str(TASKS_DIR)])


def test_gsm8k_equals_stock_tiny_model(tiny_model_path, gsm8k_include):
    compare_with_stock(str(tiny_model_path), gsm8k.TASK_NAME, 4, [str(TASKS_DIR), gsm8k_include])


@pytest.mark.skipif(not (SMOLLM2 / "config.json").exists(), reason="SmolLM2-135M not built (make models)")
@pytest.mark.parametrize("task, limit", [("ext_copy_gen", 30), (gsm8k.TASK_NAME, 3)])
def test_smollm2_equals_stock(task, limit, gsm8k_include):
    compare_with_stock(str(SMOLLM2), task, limit, [str(TASKS_DIR), gsm8k_include])
