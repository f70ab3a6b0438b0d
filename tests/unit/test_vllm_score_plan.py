"""vllm_ext's scoring arithmetic (lm_eval_ext/vllm/score_plan.py): which blocks a choice reuses, when a
warm-up pays, the fewest tokens at a block size, the probes that repair a choice and how their logprobs
are put together. Pure: no vLLM."""

from __future__ import annotations

from types import SimpleNamespace

from lm_eval_ext.vllm.score_plan import (
    MAX_PROBE_TOKENS, BlockNames, Probe, WarmupCosts, group_cost_tokens, head_row_tokens, merged_prompt_logprobs,
    minimal_tokens, probe_lengths, probe_requests, reusable_blocks, truncate_for_scoring, uncovered, warm_prompt,
    warm_up_pays,
)

SMOLLM2 = head_row_tokens(hidden_size=576, vocab_size=49152, num_layers=30, intermediate_size=1536, kv_size=192)


def test_stock_truncation_keeps_the_last_max_length_minus_one_tokens():
    assert truncate_for_scoring([1, 2, 3, 4, 5, 6], [7, 8, 9], 8) == ([3, 4, 5, 6, 7, 8, 9], 4)
    assert truncate_for_scoring([1, 2], [3], 8) == ([1, 2, 3], 2)


def test_a_choice_reuses_the_whole_blocks_before_its_context_s_last_position():
    assert reusable_blocks(64, 32) == 1  # position 63 predicts the first continuation token
    assert reusable_blocks(65, 32) == 2 and reusable_blocks(32, 32) == 0
    assert warm_prompt(list(range(70)), 32) == list(range(64))
    assert warm_prompt(list(range(64)), 32) == list(range(32))
    assert warm_prompt(list(range(32)), 32) == []


def test_a_warm_up_pays_only_where_the_first_choice_would_run_the_head_over_its_context():
    assert round(SMOLLM2, 2) == 0.27
    every_row = WarmupCosts(request_tokens=1.0, head_row_tokens=SMOLLM2)
    assert warm_up_pays(181, 32, every_row) and warm_up_pays(40, 32, every_row)
    assert not warm_up_pays(32, 32, every_row)  # no whole block to reuse
    assert not warm_up_pays(181, 32, WarmupCosts(request_tokens=1.0, head_row_tokens=0.0))  # scored rows only
    assert not warm_up_pays(40, 32, WarmupCosts(request_tokens=10.0, head_row_tokens=SMOLLM2))  # 8.6 < 10.27


def test_minimal_tokens_count_each_reusable_block_once():
    context = list(range(181))
    choices = [context + [900 + i] * 4 for i in range(2)]
    assert minimal_tokens(choices, [181, 181], 32) == [185, 25]
    # two items sharing a 64-token few-shot head: the second computes its own third block only
    head = list(range(1000, 1064))
    items = [head + [1, 2, 3] * 11 + [7], head + [4, 5, 6] * 11 + [7]]
    assert minimal_tokens(items, [97, 97], 32) == [98, 98 - 64]
    assert minimal_tokens(choices, [181, 181], 0) == [185, 185]  # no prefix cache: stock's tokens


def test_blocks_are_named_by_every_token_up_to_their_end():
    names = BlockNames(2)
    assert names.add([1, 2, 3, 4], 2) == 2
    assert names.add([1, 2, 3, 4, 5], 2) == 0
    assert names.add([9, 2, 3, 4], 2) == 2  # same second block after another first block: not shared


def test_probes_cover_the_positions_a_choice_read_from_the_cache():
    assert list(uncovered(181, 160)) == [] and list(uncovered(181, 192)) == list(range(181, 193))
    assert probe_lengths(181, 192, 32) == [192]
    assert probe_lengths(64, 64, 32) == [64]  # a context ending on a block boundary
    assert probe_lengths(181, 224, 32) == [192, 224]  # two blocks past the context's end


def test_choices_sharing_a_probe_prompt_share_one_probe():
    """On a block boundary every choice of an item needs the same probe: one request asks for all
    their next tokens (vLLM takes at most 128 per request)."""
    boundary = [(0, [1, 2], 7), (1, [1, 2], 8), (2, [1, 2], 7), (3, [1, 3], 9)]
    probes = probe_requests(boundary)
    assert [(p.first, p.prompt, p.targets, p.repairs) for p in probes] == [
        (0, (1, 2), [7, 8], [0, 1, 2]), (3, (1, 3), [9], [3])]
    many = probe_requests([(i, [1], i) for i in range(MAX_PROBE_TOKENS + 1)])
    assert [len(p.targets) for p in many] == [MAX_PROBE_TOKENS, 1]
    assert list(uncovered(0, 0)) == []  # a context cut away entirely (continuation longer than the window)


def _output(prompt_logprobs, cached, sample=None):
    return SimpleNamespace(prompt_logprobs=prompt_logprobs, num_cached_tokens=cached, sample_logprobs=sample)


def test_merged_logprobs_take_the_choice_s_rows_then_its_probes():
    tokens = [10, 11, 12, 13, 14, 15]  # context of 3, continuation 13, 14, 15
    own = _output([None, None, None, None, {13: -9.0}, {14: -1.0, 7: -0.5}, {15: -2.0}], cached=4)
    own.prompt_logprobs = own.prompt_logprobs[:6]
    assert merged_prompt_logprobs(tokens, 3, own) is None  # index 3 and 4 were read from the cache
    probe = Probe(4, _output([None, None, None, {13: -0.25}], cached=2, sample={5: -0.1, 14: -3.0}))
    merged = merged_prompt_logprobs(tokens, 3, own, [probe])
    assert merged[:3] == [None, None, None]
    assert merged[3] == {13: -0.25}  # the probe's row (the choice's own row 3 came from the cache)
    assert list(merged[4].items()) == [(14, -3.0), (5, -0.1)]  # from the probe's generated position, prompt token first
    assert merged[5] == {14: -1.0, 7: -0.5}


def test_replicas_are_balanced_by_what_a_group_computes():
    context = list(range(100))
    prompts = [context + [1], context + [2], list(range(50))]
    assert group_cost_tokens(prompts, ["a", "a", "b"], [100, 100, 49], 32) == [101, 101 - 96, 50]
