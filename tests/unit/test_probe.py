"""Budget search with a fake out-of-memory limit, the CPU arithmetic, and the probe cache."""

from __future__ import annotations

import pytest

from lm_eval_ext.hf.compute import probe


@pytest.mark.parametrize("limit", [16, 100, 1000, 5000, 70000])
def test_search_finds_the_limit_within_a_sixteenth(limit):
    calls = []

    def fits(tokens):
        calls.append(tokens)
        return tokens <= limit

    found = probe.search_budget(fits, start_tokens=64, max_tokens=1 << 20)
    assert found <= limit
    assert found >= limit - max(probe.MIN_BATCH_TOKENS, limit // 16)
    assert len(calls) < 40


def test_search_stops_at_max_tokens_without_failing():
    calls = []
    assert probe.search_budget(lambda t: calls.append(t) or True, start_tokens=100, max_tokens=700) == 700
    assert calls == [100, 200, 400, 700]


def test_search_returns_the_minimum_when_nothing_fits():
    assert probe.search_budget(lambda t: False, start_tokens=64, max_tokens=4096) == probe.MIN_BATCH_TOKENS


SMOLLM2 = probe.ModelShape(hidden_size=576, intermediate_size=1536, num_layers=30, num_kv_heads=3,
                           head_dim=64, vocab_size=49152, dtype_bytes=4)


def test_per_token_bytes_grow_with_scored_positions_and_kv_cache():
    few = probe.per_token_bytes(SMOLLM2, kind="loglikelihood", scored_fraction=0.05, row_tokens=512)
    every = probe.per_token_bytes(SMOLLM2, kind="loglikelihood", scored_fraction=1.0, row_tokens=512)
    gen = probe.per_token_bytes(SMOLLM2, kind="generate_until", scored_fraction=0.05, row_tokens=512)
    assert 60_000 < few < 120_000  # the docstring's worked example: ~88 KiB
    assert every > few + 500_000  # a full-vocabulary log-softmax per token
    assert gen - few == 30 * 2 * 192 * 4  # KV cache per token


def test_cpu_budget_is_clamped():
    assert probe.cpu_budget_tokens(10 * 2**30, 100_000) == probe.CPU_MAX_BATCH_TOKENS
    assert probe.cpu_budget_tokens(2**20, 100_000) == probe.MIN_BATCH_TOKENS
    assert probe.cpu_budget_tokens(400 * 2**20, 100_000) == 2097


def test_cpu_generation_budget_has_its_own_cap():
    plenty = 100 * 2**30
    assert probe.cpu_budget_tokens(plenty, 100_000, "generate_until") == probe.CPU_MAX_GENERATION_TOKENS
    assert probe.cpu_budget_tokens(plenty, 100_000, "loglikelihood") == probe.CPU_MAX_BATCH_TOKENS
    assert probe.cpu_budget_tokens(400 * 2**20, 100_000, "generate_until") == 2097  # RAM still bounds it


def test_probe_cache_round_trip_keyed_by_everything(tmp_path):
    cache = probe.ProbeCache(tmp_path / "sub" / "probe.json")
    key = probe.ProbeKey("m@main", "float16", "H100", 80 * 2**30, "single", "loglikelihood")
    assert cache.get(key) is None
    cache.put(key, 12345)
    assert probe.ProbeCache(tmp_path / "sub" / "probe.json").get(key) == 12345
    other = probe.ProbeKey("m@main", "float16", "H100", 80 * 2**30, "single", "generate_until")
    assert cache.get(other) is None


def test_single_process_agreement_is_identity():
    assert probe.agree_min(None, 77) == 77
