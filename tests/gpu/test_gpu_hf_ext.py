"""GPU checks of hf_ext (run on a lent GPU machine; skipped where CUDA is absent).

The same code paths are covered on CPU by tests/adapters and tests/dist.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.helpers import assert_same_samples, evaluate, per_sample  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")


@pytest.mark.gpu
@needs_gpu
def test_hf_ext_on_cuda_matches_stock(tiny_model_path, task_manager):
    tasks = ["ext_arith_mc", "ext_prose_rolling"]
    args = f"pretrained={tiny_model_path},dtype=float32,device=cuda"
    stock = evaluate("hf", args, tasks, task_manager, batch_size=8, limit=16)
    ours = evaluate("hf_ext", args, tasks, task_manager, batch_size=8, limit=16)
    assert_same_samples(per_sample(stock), per_sample(ours), atol=1e-4)


@pytest.mark.gpu
@needs_two_gpus
def test_nccl_data_parallel_two_gpus(tiny_model_path, tmp_path):
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
           str(ROOT / "accelerate_configs" / "gpu_dp2.yaml"), "-m", "lm_eval", "--model", "hf_ext",
           "--model_args", f"pretrained={tiny_model_path},dtype=float32", "--tasks", "ext_arith_mc",
           "--include_path", str(ROOT / "tasks"), "--limit", "16", "--output_path", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rank 1/2: loglikelihood" in done.stdout + done.stderr
