"""hf_ext layouts on real GPUs, compared per sample with stock hf (float32). Runs where CUDA is."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

NUM_GPUS = torch.cuda.device_count()

pytestmark = pytest.mark.gpu


def _samples(lm, task_manager):
    from lm_eval import simple_evaluate

    results = simple_evaluate(model=lm, tasks=["ext_arith_mc"], limit=8, log_samples=True, bootstrap_iters=0,
                              task_manager=task_manager)
    return {s["doc_id"]: [float(r[0][0]) for r in s["resps"]] for s in results["samples"]["ext_arith_mc"]}, results


@pytest.fixture(scope="module")
def stock(tiny_model_path, task_manager):
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(tiny_model_path), device="cuda", dtype="float32", batch_size=4)
    return _samples(lm, task_manager)[0]


@pytest.mark.skipif(NUM_GPUS < 1, reason="needs a CUDA GPU")
def test_detected_gpus_report_free_memory():
    from lm_eval_ext.plan.detect import detect_hardware

    hardware = detect_hardware()
    assert len(hardware.gpus) == NUM_GPUS
    assert all(0 < g.free_bytes <= g.total_bytes for g in hardware.gpus)


@pytest.mark.skipif(NUM_GPUS < 1, reason="needs a CUDA GPU")
@pytest.mark.parametrize("model_args, strategy, devices", [
    ({}, "single", {"cuda"}),
    ({"strategy": "cpu_offload", "max_memory_per_gpu": "300000", "max_cpu_memory": "10GiB"}, "cpu_offload",
     {"cuda", "cpu"}),
])
def test_gpu_layouts_match_stock(stock, tiny_model_path, task_manager, model_args, strategy, devices, tmp_path):
    from lm_eval_ext.hf.adapter import HfExtLM

    lm = HfExtLM(pretrained=str(tiny_model_path), dtype="float32", batch_size=4, offload_folder=str(tmp_path),
                 **model_args)
    assert lm._layout.plan.strategy.value == strategy
    placed = {str(p.device).split(":")[0] for p in lm.model.parameters()}
    device_map = getattr(lm.model, "hf_device_map", None)
    if device_map:
        placed = {("cuda" if isinstance(d, int) else str(d).split(":")[0]) for d in device_map.values()}
    assert placed == devices
    got, results = _samples(lm, task_manager)
    assert results["config"]["lm_eval_ext_plan"]["strategy"] == strategy
    for doc_id, values in stock.items():
        assert got[doc_id] == pytest.approx(values, abs=1e-4)


@pytest.mark.skipif(NUM_GPUS < 2, reason="needs two CUDA GPUs")
def test_model_split_over_two_gpus_matches_stock(stock, tiny_model_path, task_manager, tmp_path):
    from lm_eval_ext.hf.adapter import HfExtLM

    lm = HfExtLM(pretrained=str(tiny_model_path), dtype="float32", batch_size=4, strategy="model_split",
                 max_memory_per_gpu="400000", offload_folder=str(tmp_path))
    assert set(lm.model.hf_device_map.values()) == {0, 1}
    got, _ = _samples(lm, task_manager)
    for doc_id, values in stock.items():
        assert got[doc_id] == pytest.approx(values, abs=1e-4)
