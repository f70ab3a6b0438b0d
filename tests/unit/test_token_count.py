"""The token counters on plain tuples: ``hf_ext``'s (rows, families, generation families) and
``vllm_ext``'s (a model of vLLM's prefix cache under its scorer's rules). That the hf count equals the engine's
cost report after a real run is tests/adapters/test_token_count_equals_engine.py."""

from __future__ import annotations

import pytest

from lm_eval_ext.hf.policy.batching import score_request
from lm_eval_ext.hf.policy.token_count import count_generation, count_scoring, scoring_layout
from lm_eval_ext.vllm.token_count import PrefixCache, count_vllm_generation, count_vllm_scoring


def scoring(pairs, tasks, *, share=True, families=True, max_length=2048):
    requests = [score_request(i, ctx, cont, max_length) for i, (ctx, cont) in enumerate(pairs)]
    return count_scoring(requests, tasks, scoring_layout(requests, share=share, families=families, row_tokens=1024))


def test_the_worked_example_two_choices_of_one_item():
    counts = scoring([([5, 6, 7], [1]), ([5, 6, 7], [2])], ["t", "t"])
    assert counts["t"].stock_tokens == 6 and counts["t"].computed_tokens == 3
    assert counts["t"].num_requests == 2 and counts["t"].continuation_tokens == 2


def test_without_sharing_every_request_is_computed_whole():
    pairs = [([5, 6, 7], [1]), ([5, 6, 7], [2]), ([9, 8], [3, 4])]
    counts = scoring(pairs, ["a", "a", "b"], share=False)
    assert counts["a"].computed_tokens == counts["a"].stock_tokens == 6
    assert counts["b"].computed_tokens == counts["b"].stock_tokens == 3


def test_a_few_shot_family_computes_its_prefix_once_and_names_it():
    head = list(range(100, 200))  # 100 shared tokens, more than MIN_PREFIX_TOKENS
    pairs = [(head + [i, i + 1], [7]) for i in range(4)]
    counts = scoring(pairs, ["mmlu"] * 4)["mmlu"]
    assert counts.shared_prefix_tokens == 100
    assert counts.computed_tokens == 100 + 4 * 2  # the prefix once, each item's own 2 tokens
    assert counts.stock_tokens == 4 * 102
    rows_only = scoring(pairs, ["mmlu"] * 4, families=False)["mmlu"]  # small items: one packed row shares the head
    assert rows_only.shared_prefix_tokens == 0 and rows_only.computed_tokens == 108


def test_a_shared_row_is_split_between_tasks_by_useful_tokens():
    pairs = [([5, 6, 7, 8], [1]), ([5, 6, 7, 8], [2])]
    counts = scoring(pairs, ["a", "b"])
    assert counts["a"].computed_tokens == pytest.approx(2.0) and counts["b"].computed_tokens == pytest.approx(2.0)
    assert sum(c.computed_tokens for c in counts.values()) == 4


def test_generation_prefills_family_prefixes_once_and_decodes_after_the_first_token():
    head = list(range(300, 400))
    prompts = [head + [1, 2], head + [3, 4, 5], [9, 9, 9]]
    counts = count_generation(prompts, [10, 10, 10], ["g", "g", "h"], [4, 20, 0])
    g, h = counts["g"], counts["h"]
    assert g.prefill_tokens == 100 + 2 + 3 and g.shared_prefix_tokens == 100
    assert g.generated_tokens == 4 + 10  # the second request clipped to its budget
    assert g.decode_tokens == 3 + 9 and g.computed_tokens == g.prefill_tokens + g.decode_tokens
    assert (g.computed_low_tokens, g.computed_high_tokens) == (g.prefill_tokens, g.prefill_tokens + 9 + 9)
    assert h.generated_tokens == 1 and h.prefill_tokens == 3 and h.generation_budget_tokens == 10


def test_generation_repeats_share_their_whole_prompt_but_the_last_token():
    prompt = list(range(50))
    counts = count_generation([prompt] * 3, [5] * 3, ["r"] * 3, [5] * 3)["r"]
    assert counts.prefill_tokens == 49 + 3 * 1 and counts.stock_tokens == 3 * (50 + 4)


def test_vllm_prefix_cache_reads_whole_blocks_never_the_last_token():
    cache = PrefixCache(block_size=4)
    assert cache.compute(list(range(10)), read=True) == (10, 0)
    assert cache.compute(list(range(10)) + [50], read=True) == (3, 8)  # blocks 0-3 and 4-7 cached
    assert cache.compute(list(range(8)), read=True) == (4, 4)  # 8 tokens: its last block must be computed
    assert cache.compute(list(range(10)), read=False) == (10, 0)


def test_vllm_choices_read_their_items_context_and_a_scored_position_from_the_cache_costs_a_probe():
    """vllm_ext's scorer (score_plan): one engine call in grouped order; an item's first choice
    computes the context, the others read its whole blocks; a choice whose scored positions were
    read from the cache is repaired by probes of one block each."""
    context = list(range(100, 140))  # 40 tokens, blocks of 16: 2 whole blocks reusable
    pairs = [(context, [1, 2]), (context, [3, 4]), (context, [5])]
    counts = count_vllm_scoring(pairs, ["mc"] * 3, max_length=2048, block_size=16,
                                prefix_cache_scoring=True)["mc"]
    assert counts.computed_tokens == 42 + (42 - 32) + (41 - 32)
    assert counts.stock_tokens == 42 + 42 + 41
    stock = count_vllm_scoring(pairs, ["mc"] * 3, max_length=2048, block_size=16,
                               prefix_cache_scoring=False)["mc"]
    assert stock.computed_tokens == stock.stock_tokens == 125
    edge = list(range(200, 232))  # 32 tokens: the second choice reads both blocks, position 31 with them
    on_edge = count_vllm_scoring([(edge, [1]), (edge, [2])], ["mc"] * 2, max_length=2048, block_size=16,
                                 prefix_cache_scoring=True)["mc"]
    assert on_edge.computed_tokens == 33 + (33 - 32) + 16  # the probe of the first 32 tokens computes 16


def test_vllm_generation_reuses_cached_prompt_blocks_longest_first():
    head = list(range(64))
    prompts = [head + [1], head + [2, 3]]
    counts = count_vllm_generation(prompts, [8, 8], ["g", "g"], [3, 3], block_size=16, prefix_caching=True)["g"]
    assert counts.prefill_tokens == 66 + (65 - 64)
    off = count_vllm_generation(prompts, [8, 8], ["g", "g"], [3, 3], block_size=16, prefix_caching=False)["g"]
    assert off.prefill_tokens == 131 and off.decode_tokens == counts.decode_tokens == 4
