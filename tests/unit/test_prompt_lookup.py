"""Pure rules of prompt-lookup greedy decoding: drafts, acceptance, clipping, stop strings."""

from __future__ import annotations

import random

import pytest

from lm_eval_ext.hf.policy.prompt_lookup import PromptLookup, StopStrings, accepted_tokens, clip_emitted, draft_room


def test_draft_follows_the_latest_occurrence_of_the_longest_matching_suffix():
    lookup = PromptLookup([1, 2, 3, 9, 2, 3, 4, 5, 7, 2, 3], max_ngram=3)
    assert lookup.draft(2) == [4, 5]  # "2 3" last seen before "4 5" (not before "9")
    lookup.extend([4])
    assert lookup.draft(3) == [5, 7, 2]  # "2 3 4" wins over the shorter "3 4" and "4"


def test_no_draft_without_a_match_or_room():
    lookup = PromptLookup([1, 2, 3], max_ngram=2)
    assert lookup.draft(4) == []  # "3" never occurred before the end
    assert PromptLookup([1, 2, 1, 2], max_ngram=2).draft(0) == []
    assert PromptLookup([], max_ngram=2).draft(3) == []


def test_min_ngram_ignores_shorter_matches():
    assert PromptLookup([5, 1, 6, 1], min_ngram=2, max_ngram=3).draft(2) == []
    assert PromptLookup([5, 1, 6, 1], min_ngram=1, max_ngram=3).draft(2) == [6, 1]
    with pytest.raises(ValueError, match="min_ngram"):
        PromptLookup([1], min_ngram=3, max_ngram=2)


def test_extend_equals_building_from_the_whole_sequence():
    rng = random.Random(0)
    tokens = [rng.randrange(5) for _ in range(200)]
    grown = PromptLookup(tokens[:50])
    for i in range(50, 200, 7):
        grown.extend(tokens[i : i + 7])
        whole = PromptLookup(tokens[: i + 7])
        assert grown.draft(4) == whole.draft(4)


@pytest.mark.parametrize("draft, predicted, expected", [
    ([], [4], [4]),
    ([7, 8, 9], [7, 8, 9, 1], [7, 8, 9, 1]),
    ([7, 8, 9], [7, 3, 9, 1], [7, 3]),
    ([7, 8], [1, 8, 2], [1]),
])
def test_accepted_tokens_keep_drafts_until_the_first_disagreement(draft, predicted, expected):
    assert accepted_tokens(draft, predicted) == expected


@pytest.mark.parametrize("rows, expected", [(1, 8), (4, 7), (8, 3), (16, 1), (17, 0), (64, 0)])
def test_draft_room_shrinks_with_the_batch_so_a_forward_stays_small(rows, expected):
    assert draft_room(rows, 8, max_positions=32) == expected
    assert draft_room(rows, 0, max_positions=32) == 0


def test_clip_emitted_stops_at_eos_and_room():
    assert clip_emitted([5, 6, 2, 7], room=10, eos_ids={2}) == ([5, 6, 2], True)
    assert clip_emitted([5, 6, 7], room=2, eos_ids={2}) == ([5, 6], True)
    assert clip_emitted([5, 6], room=3, eos_ids=set()) == ([5, 6], False)


def greedy(next_token, prompt, steps):
    seq = list(prompt)
    for _ in range(steps):
        seq.append(next_token(seq))
    return seq[len(prompt) :]


def speculative(next_token, prompt, steps, draft_tokens):
    """The generation loop's rules with a fake model; returns (tokens, forwards)."""
    lookup, out, forwards = PromptLookup(prompt), [], 0
    while len(out) < steps:
        draft = lookup.draft(min(draft_tokens, steps - len(out) - 1))
        seq = list(prompt) + out
        predicted = [next_token(seq + draft[:i]) for i in range(len(draft) + 1)]  # one "forward"
        new, _ = clip_emitted(accepted_tokens(draft, predicted), room=steps - len(out), eos_ids=set())
        out += new
        lookup.extend(new)
        forwards += 1
    return out, forwards


@pytest.mark.parametrize("seed", range(20))
def test_speculation_reproduces_greedy_with_fewer_forwards_on_repetitive_text(seed):
    rng = random.Random(seed)
    table = {(a, b): rng.randrange(6) for a in range(6) for b in range(6)}  # a repetitive "model"

    def next_token(seq):
        return table[seq[-2], seq[-1]]

    prompt = [rng.randrange(6) for _ in range(30)]
    want = greedy(next_token, prompt, 40)
    got, forwards = speculative(next_token, prompt, 40, draft_tokens=5)
    assert got == want
    assert forwards < 40


class FakeTokenizer:
    """Decodes like a SentencePiece tokenizer: the first token's leading space is dropped."""

    words = {1: " Question", 2: ":", 3: " 42", 4: "\n", 5: "\n"}

    def decode(self, tokens):
        return "".join(self.words[t] for t in tokens).removeprefix(" ")


def test_stop_strings_found_in_the_tail_are_confirmed_on_the_whole_output():
    calls = []

    def decode(tokens):
        calls.append(len(tokens))
        return FakeTokenizer().decode(tokens)

    stops = StopStrings(["Question:", ""], decode)
    out = [3] * 50 + [1, 2]
    assert stops.hit(out, num_new=1)
    assert calls[0] < len(out) and calls[-1] == len(out)
    calls.clear()
    assert not stops.hit([3] * 50, num_new=1)
    assert calls == [len("Question:") + StopStrings.SLACK_TOKENS + 1]


def test_a_match_only_the_tail_decode_shows_does_not_stop_the_row():
    stops = StopStrings(["2\n"], lambda tokens: "2\n" if len(tokens) <= 6 else "no stop here")
    assert not stops.hit([3] * 10, num_new=1)


def test_no_stop_strings_never_decode():
    stops = StopStrings([], lambda tokens: pytest.fail("decoded"))
    assert not stops.hit([1, 2], num_new=2)
