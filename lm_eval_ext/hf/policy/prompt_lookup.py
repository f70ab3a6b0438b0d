"""PURE: the deciding parts of greedy decoding with prompt-lookup drafts (no torch).

Prompt-lookup decoding guesses a row's next tokens by finding its last few tokens earlier in
the row (prompt or output so far) and proposing what followed them there. Few-shot answers
copy numbers and phrases from their question, and copying tasks copy whole lines, so such
guesses are often right. The model then checks every guess of every row in one forward over
``1 + draft`` positions and keeps the longest prefix it would have produced itself: the output
is the greedy output, only reached in fewer forwards (a forward over a few positions costs
little more than one over a single position when decoding reads all weights per step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class PromptLookup:
    """The n-grams (``min_ngram <= n <= max_ngram``) of one growing token sequence, each mapped to
    where its latest occurrence is followed, so a draft costs ``O(max_ngram)`` dictionary reads.

    >>> lookup = PromptLookup([5, 6, 7, 8, 1, 5, 6], max_ngram=2)
    >>> lookup.draft(3)  # "5 6" was followed by "7 8 1"
    [7, 8, 1]
    """

    def __init__(self, tokens: Sequence[int], *, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        self.tokens: list[int] = []
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self._follower: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            end = len(self.tokens)
            # the n-grams ending just before ``token`` now have a follower: ``token`` at ``end``
            for n in range(self.min_ngram, min(self.max_ngram, end) + 1):
                self._follower[tuple(self.tokens[end - n : end])] = end
            self.tokens.append(token)

    def draft(self, num_tokens: int) -> list[int]:
        """Up to ``num_tokens`` tokens that followed the longest matching suffix; [] if none."""
        if num_tokens <= 0:
            return []
        for n in range(min(self.max_ngram, len(self.tokens)), self.min_ngram - 1, -1):
            start = self._follower.get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start : start + num_tokens]
        return []


#: draft tokens per row and step, unless ``prompt_lookup_num_tokens`` says otherwise. Off: on the
#: project's 2-core CPU a forward over 2-9 positions cost ~2x one over a single position (a
#: matrix-vector product becomes a matrix product), more than the ~2 tokens per forward that
#: drafts won on GSM8K and ext_copy_gen (README, scoring engine); untested on GPUs
DEFAULT_DRAFT_TOKENS = 0
#: positions a verifying forward may hold: decoding one position per row is bound by reading the
#: weights, and a few more positions ride along almost free; many rows x long drafts are compute
#: bound, where every rejected draft token costs as much as a real one
MAX_VERIFY_POSITIONS = 32


def draft_room(num_rows: int, draft_tokens: int, max_positions: int = MAX_VERIFY_POSITIONS) -> int:
    """Draft tokens per row this step: ``draft_tokens``, fewer when ``num_rows`` rows of
    ``1 + draft`` positions would pass ``max_positions``; 0 (plain decoding) for large batches.

    >>> draft_room(2, 8), draft_room(8, 8), draft_room(40, 8)
    (8, 3, 0)
    """
    return max(0, min(draft_tokens, max_positions // max(1, num_rows) - 1))


def accepted_tokens(draft: Sequence[int], predicted: Sequence[int]) -> list[int]:
    """The tokens greedy decoding emits after checking ``draft``.

    ``predicted[i]`` is the model's argmax after the row's last token followed by ``draft[:i]``.
    Drafts are kept while they equal the prediction before them; the prediction after the last
    kept draft is new. So at least one token is emitted, at most ``len(draft) + 1``.

    >>> accepted_tokens([7, 8, 9], [7, 8, 4, 2])
    [7, 8, 4]
    """
    kept = 0
    while kept < len(draft) and draft[kept] == predicted[kept]:
        kept += 1
    return list(predicted[: kept + 1])


def clip_emitted(tokens: Sequence[int], *, room: int, eos_ids: set[int]) -> tuple[list[int], bool]:
    """``tokens`` cut to the ``room`` left before ``max_new_tokens`` and after the first EOS
    (kept); returns (tokens, whether the row is done for either reason)."""
    out = list(tokens[:room])
    for i, token in enumerate(out):
        if token in eos_ids:
            return out[: i + 1], True
    return out, len(out) >= room


class StopStrings:
    """Whether a row's output contains a stop string, decoding only its tail.

    Decoding the whole output at every step costs O(length) per step; the tail that can hold a
    stop string completed by the newest tokens is short. A tail decode can differ from the same
    characters in the full decode (a tokenizer dropping a leading space, a split multi-byte
    character), so a hit in the tail is confirmed on the full output: a false hit never stops a
    row early, and a missed one only costs steps (lm-eval cuts the text at the stop anyway).
    """

    #: extra tail tokens for tokens that decode to nothing (special tokens, partial characters)
    SLACK_TOKENS = 4

    def __init__(self, stop_strings: Sequence[str], decode: Callable[[list[int]], str]) -> None:
        self.stop_strings = [s for s in stop_strings if s]
        self.decode = decode
        self._tail_tokens = max((len(s) for s in self.stop_strings), default=0) + self.SLACK_TOKENS

    def hit(self, output: list[int], num_new: int) -> bool:
        if not self.stop_strings:
            return False
        tail = self.decode(output[-(num_new + self._tail_tokens) :])
        if not any(s in tail for s in self.stop_strings):
            return False
        text = self.decode(output)
        return any(s in text for s in self.stop_strings)
