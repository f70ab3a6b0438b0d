"""Few-shot families (``hf/families.py``): which requests share a prefix computed once."""

from __future__ import annotations

from lm_eval_ext.hf.policy.batching import ScoreRequest
from lm_eval_ext.hf.policy.families import MIN_PREFIX_TOKENS, split_families


def mc_item(first_index: int, head: tuple[int, ...], question: tuple[int, ...], choices=((7,), (8,), (9,))):
    """One multiple-choice item: ``head + question`` as context, one-token choices (input = context)."""
    context = head + question
    return [ScoreRequest(first_index + i, context + choice[:-1], choice) for i, choice in enumerate(choices)]


def test_items_after_one_long_head_form_one_family_with_the_head_as_prefix():
    head = tuple(range(1000, 1000 + 200))
    requests = mc_item(0, head, (1, 2, 3)) + mc_item(3, head, (4, 5)) + mc_item(6, head, (6, 6, 6, 6))
    families = split_families(requests)
    assert len(families) == 1
    family = families[0]
    assert family.prefix == head
    by_index = {r.index: r for r in requests}
    for suffix in family.requests:
        whole = by_index[suffix.index]
        assert family.prefix + suffix.input_tokens == whole.input_tokens
        assert suffix.offset == len(head) and suffix.useful_tokens == whole.useful_tokens
        assert suffix.continuation_tokens == whole.continuation_tokens
    assert sorted(r.index for r in family.requests) == sorted(by_index)


def test_a_prefix_never_swallows_a_position_that_predicts_a_continuation():
    head = tuple(range(100, 300))
    # a two-token continuation whose first token is still part of the head of the others
    short = [ScoreRequest(0, head[:150], (head[150], 5))]  # predicts from position 149 on
    requests = short + mc_item(1, head, (1,)) + mc_item(4, head, (2,))
    families = split_families(requests)
    shared = [f for f in families if f.prefix]
    assert shared and all(len(f.prefix) <= 149 for f in shared)
    for family in shared:
        for r in family.requests:
            assert len(r.input_tokens) >= len(r.continuation_tokens)


def test_zero_shot_items_and_single_items_share_nothing():
    requests = mc_item(0, (1, 2), (10, 11, 12)) + mc_item(3, (1, 2), (20, 21))  # a 2-token template
    requests += mc_item(6, tuple(range(500, 700)), (3,))  # a long head, but alone
    families = split_families(requests)
    assert [f.prefix for f in families] == [()]
    assert sorted(r.index for r in families[0].requests) == list(range(9))
    assert all(r.offset == 0 for r in families[0].requests)


def test_an_item_that_would_shrink_the_saving_starts_its_own_family():
    long_head = tuple(range(2000, 2300))
    a = mc_item(0, long_head, (1,))
    b = mc_item(3, long_head, (2,))
    # shares only MIN_PREFIX_TOKENS + 6 tokens with a and b: 2 x 70 < 1 x 300, not worth the cut
    c = mc_item(6, long_head[: MIN_PREFIX_TOKENS + 6] + (9999,) * 50, (3,))
    d = mc_item(9, long_head[: MIN_PREFIX_TOKENS + 6] + (9999,) * 50, (4,))
    families = split_families(a + b + c + d)
    prefixes = sorted(len(f.prefix) for f in families)
    assert prefixes == [len(long_head), MIN_PREFIX_TOKENS + 6 + 50] or prefixes == [MIN_PREFIX_TOKENS + 6 + 50, len(long_head)]
    assert sum(len(f.requests) for f in families) == 12
