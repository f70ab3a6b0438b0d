"""The probe cache and the agreement between ranks (the search and CPU arithmetic: test_token_budget.py)."""

from __future__ import annotations

from lm_eval_ext.hf.compute import probe


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
