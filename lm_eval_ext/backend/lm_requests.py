"""lm-eval requests as tokens, the way stock lm-eval makes them, for every backend.

The model objects passed in are stock lm-eval models (``HFLM``, ``VLLM`` subclasses): these
functions call their tokenisation (``tok_encode``, ``_encode_pair``, ``prefix_token_id``) and
stock's public window helpers, so each backend's requests are exactly stock's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def encode_pairs(lm: Any, instances: Sequence[Any]) -> list[tuple[list[int], list[int]]]:
    """``(context tokens, continuation tokens)`` of each loglikelihood request, as stock
    ``TemplateLM.loglikelihood`` makes them (an empty context becomes the prefix token)."""
    pairs = []
    for context, continuation in (instance.args for instance in instances):
        if context == "":
            continuation_enc = lm.tok_encode(continuation, add_special_tokens=False)
            pairs.append(([lm.prefix_token_id], continuation_enc) if lm.prefix_token_id != continuation_enc[0]
                         else (continuation_enc[:1], continuation_enc[1:]))
        else:
            pairs.append(lm._encode_pair(context, continuation))
    return pairs


def rolling_windows(lm: Any, text: str, max_seq_len: int) -> list[tuple[list[int], list[int]]]:
    """Stock's disjoint rolling windows of one document: ``max_seq_len`` tokens each, one token of
    context (``HFLM`` uses ``max_length``, ``VLLM`` ``max_length - 2``)."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    return [make_disjoint_window(window) for window in get_rolling_token_windows(
        token_list=lm.tok_encode(text), prefix_token=lm.prefix_token_id, max_seq_len=max_seq_len, context_len=1)]


class RollingDocuments:
    """The rolling windows of a call's documents, and each document's total the moment its last
    window is scored: the sum of its windows' scores from 0, in window order (stock's sum).

    >>> docs = RollingDocuments([[([0], [1, 2])], [([0], [3]), ([3], [4])]], on_total=print)
    >>> docs.owner
    [0, 1, 1]
    >>> docs.scored(1, (-1.5, True)); docs.scored(0, (-0.5, False)); docs.scored(2, (-2.0, True))
    0 -0.5
    1 -3.5
    """

    def __init__(self, windows_per_document: Sequence[Sequence[tuple[list[int], list[int]]]],
                 on_total: Any) -> None:
        self.windows: list[tuple[list[int], list[int]]] = []
        self.owner: list[int] = []
        self._of_document: list[list[int]] = []
        for doc, windows in enumerate(windows_per_document):
            self._of_document.append(list(range(len(self.windows), len(self.windows) + len(windows))))
            self.windows.extend(windows)
            self.owner.extend([doc] * len(windows))
        self._remaining = [len(w) for w in self._of_document]
        self._scores: list[Any] = [None] * len(self.windows)
        self._on_total = on_total

    def report_empty(self) -> None:
        """Documents without a window (an empty text) total 0, as stock's empty sum."""
        for doc, remaining in enumerate(self._remaining):
            if remaining == 0:
                self._on_total(doc, 0)

    def scored(self, window: int, answer: tuple[float, bool]) -> None:
        self._scores[window] = answer
        doc = self.owner[window]
        self._remaining[doc] -= 1
        if self._remaining[doc] == 0:
            self._on_total(doc, sum(self._scores[w][0] for w in self._of_document[doc]))
