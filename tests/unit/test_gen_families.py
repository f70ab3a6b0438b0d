"""Generation families: repeats share their whole prompt but the last token, few-shot blocks their head."""

from lm_eval_ext.hf.policy.gen_families import GenerationFamily, generation_families

HEAD = tuple(range(1000, 1300))  # a 300-token few-shot block


def by_members(families):
    return {f.members: f.prefix for f in families}


def test_repeats_share_the_prompt_but_its_last_token():
    a = HEAD + (1, 2, 3)
    families = generation_families([a, a, a])
    assert families == [GenerationFamily(a[:-1], (0, 1, 2))]


def test_few_shot_items_share_their_head_and_stragglers_go_whole():
    prompts = [HEAD + (5, 6), (7, 8, 9), HEAD + (4, 4, 4), HEAD + (9,)]
    found = by_members(generation_families(prompts))
    assert found[(2, 0, 3)] == HEAD  # sorted order: (4,4,4) < (5,6) < (9,)
    assert found[(1,)] == ()


def test_repeats_win_over_a_shared_head():
    a, b = HEAD + (1, 2), HEAD + (3, 4)
    found = by_members(generation_families([a] * 4 + [b] * 4))
    assert found == {(0, 1, 2, 3): a[:-1], (4, 5, 6, 7): b[:-1]}


def test_a_short_shared_head_is_no_family():
    found = by_members(generation_families([(1, 2, 3, 4), (1, 2, 3, 5)]))
    assert found == {(0, 1): ()}


def test_every_row_keeps_at_least_one_token_of_its_own():
    for family in generation_families([HEAD, HEAD + (1,), HEAD[:100]]):
        for index in family.members:
            prompt = [HEAD, HEAD + (1,), HEAD[:100]][index]
            assert len(prompt) > len(family.prefix)
