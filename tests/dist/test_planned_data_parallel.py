"""Two gloo processes on CPU: hf_ext plans data_parallel from the launch and scores like stock hf."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, sys
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    model, tiny, tasks, out = sys.argv[1:5]
    if model == "hf_ext":
        from lm_eval_ext.hf.adapter import HfExtLM as Model
    else:
        from lm_eval.models.huggingface import HFLM as Model
    lm = Model(pretrained=tiny, device="cpu", dtype="float32", batch_size=4)
    results = simple_evaluate(model=lm, tasks=["ext_arith_mc"], limit=8, log_samples=True, bootstrap_iters=0,
                              task_manager=TaskManager(include_path=[tasks], include_defaults=False))
    if results is not None:  # rank 0 only
        samples = {s["doc_id"]: [r[0][0] for r in s["resps"]] for s in results["samples"]["ext_arith_mc"]}
        json.dump({"samples": samples, "plan": results["config"].get("lm_eval_ext_plan")}, open(out, "w"))
""")


def _run(argv: list[str], tmp_path: Path, model: str, tiny: Path, base_env: dict) -> dict:
    script = tmp_path / "evaluate.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"{model}.json"
    env = {**base_env, "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "true"}
    env.pop("OMP_NUM_THREADS", None)  # the planner sets it: 2 cores / 2 processes
    done = subprocess.run(argv + [str(script), model, str(tiny), str(REPO / "tasks"), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    first_errors = [line for line in done.stderr.splitlines() if "[rank0]" in line][-40:]
    assert done.returncode == 0, "\n".join(first_errors) + "\n...\n" + done.stderr[-3000:]
    return json.loads(out.read_text()) | {"log": done.stderr}


def test_two_processes_plan_data_parallel_and_match_stock(tmp_path, tiny_model_path, scratch_env):
    stock = _run([sys.executable], tmp_path, "hf", tiny_model_path, scratch_env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    ext = _run(torchrun, tmp_path, "hf_ext", tiny_model_path, scratch_env)
    assert ext["plan"]["strategy"] == "data_parallel" and ext["plan"]["num_replicas"] == 2
    assert ext["plan"]["device"] == "cpu"
    assert sorted(ext["samples"]) == sorted(stock["samples"]) and len(stock["samples"]) == 8
    for doc_id, values in stock["samples"].items():
        assert ext["samples"][doc_id] == pytest.approx(values, abs=1e-5)
