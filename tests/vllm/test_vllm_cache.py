"""vllm_ext with the request cache, in process, on real vLLM: a second run is all hits and starts no
engine; another model over the same cache directory hits nothing. (Server mode: test_vllm_server.)"""

from __future__ import annotations

import os
import random
import shutil

import pytest

from lm_eval_ext.cache.store import RequestStore
from lm_eval_ext.commands.cache_verify import recompute_sample
from tests.vllm.evaluation import evaluate_samples
from tests.vllm.support import ENGINE_ARGS, requires_vllm

pytestmark = [pytest.mark.vllm, requires_vllm]


def _evaluate(model_path: str, cache_dir, task_manager, limit: int | None = None, **args):
    """``(samples, request cache totals, engine starts)`` of one run over ``cache_dir``."""
    from lm_eval_ext.vllm.adapter import VllmExtLM

    lm = VllmExtLM(pretrained=model_path, cache_dir=str(cache_dir), **ENGINE_ARGS, **args)
    try:
        samples = evaluate_samples(lm, task_manager, **({"limit": limit} if limit else {}))
    finally:
        lm.close()
    return samples, lm.request_cache_report()["totals"], lm.num_engine_starts


def test_second_run_is_all_hits_identical_and_starts_no_engine(tiny_vllm_model_path, task_manager, tmp_path):
    first, first_totals, first_starts = _evaluate(tiny_vllm_model_path, tmp_path, task_manager)
    second, second_totals, second_starts = _evaluate(tiny_vllm_model_path, tmp_path, task_manager)
    assert first_totals["hits"] == 0 and first_totals["misses"] > 0 and first_starts == 1
    assert second_totals["misses"] == 0 and second_totals["hits"] == first_totals["misses"]
    assert second_starts == 0  # every answer came from the cache: no model load at all
    assert second == first  # JSON keeps floats exactly: identical, not merely close
    lines = []
    mismatches = recompute_sample(RequestStore.open(tmp_path), f"pretrained={tiny_vllm_model_path},dtype=float32,"
                                  "enforce_eager=True", 6, random.Random(0), lines.append, backend="vllm_ext")
    assert mismatches == 0 and "6 of" in lines[-1]  # `lm-eval-ext cache verify --backend vllm_ext`


def _perturbed_copy(model_path: str, out) -> str:
    """The same tiny model with one weight changed: same shapes, names, sizes and tokenizer."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_path, out)
    tensors = load_file(out / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] * 1.01
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return str(out)


def test_another_model_over_the_same_cache_gets_no_hits(tiny_vllm_model_path, task_manager, tmp_path):
    cache_dir = tmp_path / "cache"
    _evaluate(tiny_vllm_model_path, cache_dir, task_manager, limit=5)
    other = _perturbed_copy(tiny_vllm_model_path, tmp_path / "other-model")
    _, totals, starts = _evaluate(other, cache_dir, task_manager, limit=5)
    assert totals["hits"] == 0 and totals["misses"] > 0 and starts == 1


def test_fingerprint_ignores_the_layout_but_not_what_changes_outputs(tiny_vllm_model_path, tmp_path):
    from lm_eval_ext.vllm.adapter import VllmExtLM
    from lm_eval_ext.cache.fingerprint import fingerprint
    from lm_eval_ext.vllm.engines import engine_starts_so_far

    def fp(**args) -> str:
        lm = VllmExtLM(pretrained=tiny_vllm_model_path, cache_dir=str(tmp_path), **{**ENGINE_ARGS, **args})
        return fingerprint(lm.request_cache.identity())

    before = engine_starts_so_far()
    base = fp()
    layouts = [{"batch_size": 4, "max_batch_size": 8}]
    if len(os.sched_getaffinity(0)) >= 2:  # the planner refuses 2 replicas or ranks on 1 core
        layouts += [{"data_parallel_size": 2}, {"tensor_parallel_size": 2}]
    assert all(fp(**layout) == base for layout in layouts)
    assert fp(dtype="bfloat16") != base and fp(max_model_len=512) != base and fp(add_bos_token=True) != base
    assert engine_starts_so_far() == before  # identities come from the config: no engine was started
