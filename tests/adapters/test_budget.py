"""Budget probing inside hf_ext: grow-then-bisect on real rows with a fake OOM limit, the probe
cache short-circuit, and the CPU derivation."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lm_eval_ext.hf.compute import probe  # noqa: E402
from lm_eval_ext.hf.policy import token_budget  # noqa: E402
from lm_eval_ext.hf.policy.batching import ScoreRequest, pack_rows  # noqa: E402
from lm_eval_ext.plan.token_bytes import bytes_per_token  # noqa: E402


def rows_of(width, count=6):
    requests = [ScoreRequest(i, tuple([3 + i] * width), (4,)) for i in range(count)]
    return pack_rows(requests, row_tokens=width, share=False)


def test_gpu_probe_uses_real_rows_and_stops_below_the_fake_limit(ext_lm, monkeypatch):
    limit_tokens, width = 3000, 50
    seen = []

    def fake_score(batch):
        seen.append((batch.padded_tokens, {len(r) for r in batch.rows}))
        if batch.padded_tokens > limit_tokens:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return {}

    monkeypatch.setattr(ext_lm.engine, "score_batch", fake_score)
    budget = ext_lm.engine.budgets.probe_gpu("loglikelihood", {"rows": rows_of(width)}, ext_lm.engine.score_batch)
    assert all(widths == {width} for _, widths in seen)  # batches made of the real rows
    assert (budget // width) * width <= limit_tokens
    assert budget >= limit_tokens - limit_tokens // 16 - width
    assert any(tokens > limit_tokens for tokens, _ in seen)  # it did grow past the limit


def test_a_cached_probe_is_not_repeated(ext_lm, tmp_path, monkeypatch):
    ext_lm.engine.budgets.probe_cache = probe.ProbeCache(tmp_path / "probe.json")
    key = ext_lm.engine.budgets.probe_key("loglikelihood")
    ext_lm.engine.budgets.probe_cache.put(key, 777)
    monkeypatch.setattr(ext_lm.engine.budgets, "cpu_budget", lambda *a: pytest.fail("derived again"))
    assert ext_lm.engine.budgets.find("loglikelihood", {}, ext_lm.engine.score_batch) == 777
    assert "tiny-llama" in key.model and key.device == "cpu" and key.request_kind == "loglikelihood"


def test_cpu_budget_comes_from_available_ram(ext_lm, monkeypatch):
    import psutil

    class FakeMemory:
        available = 64 * 2**20
        total = 2**34

    monkeypatch.setattr(psutil, "virtual_memory", lambda: FakeMemory())
    small = ext_lm.engine.budgets.cpu_budget("loglikelihood", {"scored_fraction": 1.0, "row_tokens": 512})
    facts = ext_lm.engine.budgets.model_facts()
    per_token = bytes_per_token(facts, scored_fraction=1.0, attention_row_tokens=512)
    assert small == token_budget.cpu_budget_tokens(FakeMemory.available, per_token)
    assert token_budget.MIN_BATCH_TOKENS <= small < token_budget.CPU_MAX_BATCH_TOKENS


def test_the_cpu_budget_reads_the_loaded_model_with_the_planners_reader(ext_lm):
    """One config reader: the loaded model's facts equal the planner's from its config.json."""
    from lm_eval_ext.plan.model_facts import load_model_facts

    loaded = ext_lm.engine.budgets.model_facts()
    planned = load_model_facts(ext_lm.pretrained, "float32")
    for name in ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim", "vocab_size",
                 "dtype", "kv_bytes_per_token", "num_params"):
        assert getattr(loaded, name) == getattr(planned, name), name


def test_the_probe_key_names_the_strategy_that_was_built(ext_lm):
    """It read an attribute nothing set, so every layout shared one budget; now the layout's."""
    from lm_eval_ext.hf.compute.engine import EngineSettings, ScoringEngine

    assert ext_lm.engine.budgets.probe_key("loglikelihood").strategy == ext_lm._layout.strategy_name == "single"
    split = ScoringEngine(ext_lm, EngineSettings(strategy="model_split"))
    assert split.budgets.probe_key("loglikelihood").strategy == "model_split"
    assert split.budgets.probe_key("loglikelihood") != ext_lm.engine.budgets.probe_key("loglikelihood")
