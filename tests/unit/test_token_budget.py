"""Budget search with a fake out-of-memory limit, and the CPU arithmetic (hf/policy/token_budget.py)."""

from __future__ import annotations

import pytest

from lm_eval_ext.hf.policy import token_budget as budget


@pytest.mark.parametrize("limit", [16, 100, 1000, 5000, 70000])
def test_search_finds_the_limit_within_a_sixteenth(limit):
    calls = []

    def fits(tokens):
        calls.append(tokens)
        return tokens <= limit

    found = budget.search_budget(fits, start_tokens=64, max_tokens=1 << 20)
    assert found <= limit
    assert found >= limit - max(budget.MIN_BATCH_TOKENS, limit // 16)
    assert len(calls) < 40


def test_search_stops_at_max_tokens_without_failing():
    calls = []
    assert budget.search_budget(lambda t: calls.append(t) or True, start_tokens=100, max_tokens=700) == 700
    assert calls == [100, 200, 400, 700]


def test_search_returns_the_minimum_when_nothing_fits():
    assert budget.search_budget(lambda t: False, start_tokens=64, max_tokens=4096) == budget.MIN_BATCH_TOKENS


def test_cpu_budget_is_clamped():
    assert budget.cpu_budget_tokens(10 * 2**30, 100_000) == budget.CPU_MAX_BATCH_TOKENS
    assert budget.cpu_budget_tokens(2**20, 100_000) == budget.MIN_BATCH_TOKENS
    assert budget.cpu_budget_tokens(400 * 2**20, 100_000) == 2097


def test_cpu_generation_budget_has_its_own_cap():
    plenty = 100 * 2**30
    assert budget.cpu_budget_tokens(plenty, 100_000, "generate_until") == budget.CPU_MAX_GENERATION_TOKENS
    assert budget.cpu_budget_tokens(plenty, 100_000, "loglikelihood") == budget.CPU_MAX_BATCH_TOKENS
    assert budget.cpu_budget_tokens(400 * 2**20, 100_000, "generate_until") == 2097  # RAM still bounds it


def test_the_module_docstring_example():
    assert budget.cpu_budget_tokens(400 * 2**20, 67_788) == 3093
