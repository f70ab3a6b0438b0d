"""PURE: few-shot *families*: loglikelihood requests that continue one long shared prefix.

Few-shot multiple choice with fixed examples (MMLU 5-shot with lm-eval's ``first_n`` sampler, any
task whose few-shot examples do not change per item) gives every item the same prompt head: on
MMLU anatomy ~330 tokens of description and five examples before a ~55-token question. Packing
items into rows (``batching.pack_rows``) shares that head only inside one row, so a 1,024-token row
still recomputes it once per ~12 items, and the row's dense tree mask makes every node attend over
the whole row. A family computes the head once, keeps its KV cache (``prefix_kv.py``), and scores
each item as a short row of its own that reads that cache: computed tokens fall from
``rows x P + n x q`` to ``P + n x q`` and each node attends over ``P`` + its own item only.

In :data:`MIN_PREFIX_TOKENS` units of saving: a family pays one extra forward for its prefix (at
least ``batching.BATCH_FLOOR_TOKENS``, 128 tokens' time, for a short one) and saves ``P`` tokens per item after
the first, so three items sharing 64 tokens already gain. 0-shot items (ARC's ``Question:``, a
couple of tokens) and rolling windows never form a family and keep the row packing.

Items are taken in sorted order (neighbours share the longest prefixes). An item joins the open
family when the family's prefix, cut to what the item shares, stays >= ``MIN_PREFIX_TOKENS`` and
the family's total saving does not shrink: ``n x new <= (n - 1) x old`` would trade a long prefix
shared by ``n`` items for a shorter one shared by ``n + 1``. A prefix never reaches a position that
predicts a continuation token (``P <= len(input) - len(continuation)`` for every member), so
every scored position is in an item's own row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lm_eval_ext.hf.policy.batching import ScoreRequest, common_prefix_tokens, group_items

#: shortest prefix worth its own forward and KV cache (see the module docstring)
MIN_PREFIX_TOKENS = 64


@dataclass(frozen=True)
class Family:
    """Requests in suffix form (``offset == len(prefix)``) after a shared ``prefix``; a family
    with the empty prefix holds the requests that share none (whole requests, offset 0)."""

    prefix: tuple[int, ...]
    requests: tuple[ScoreRequest, ...]


def _prefix_room(item: Sequence[ScoreRequest]) -> int:
    """Longest prefix that leaves every scored position of the item in its own row."""
    return min(len(r.input_tokens) - len(r.continuation_tokens) for r in item)


def _suffix(request: ScoreRequest, length: int) -> ScoreRequest:
    return ScoreRequest(request.index, request.input_tokens[length:], request.continuation_tokens,
                        offset=request.offset + length)


def split_families(requests: Sequence[ScoreRequest], *, min_prefix_tokens: int = MIN_PREFIX_TOKENS) -> list[Family]:
    """Families of >= 2 items sharing >= ``min_prefix_tokens``, in sorted order, then (if any)
    one family with the empty prefix holding every other request."""
    families: list[Family] = []
    alone: list[ScoreRequest] = []
    members: list[list[ScoreRequest]] = []
    length = 0

    def close() -> None:
        if len(members) >= 2:
            prefix = members[0][0].input_tokens[:length]
            families.append(Family(prefix, tuple(_suffix(r, length) for item in members for r in item)))
        else:
            alone.extend(r for item in members for r in item)

    for item in group_items(requests):
        room = _prefix_room(item)
        if members:
            shared = min(length, room, common_prefix_tokens(members[0][0].input_tokens, item[0].input_tokens))
            if shared >= min_prefix_tokens and len(members) * shared >= (len(members) - 1) * length:
                members.append(item)
                length = shared
                continue
            close()
        members, length = [item], room
    if members:
        close()
    if alone:
        families.append(Family((), tuple(alone)))
    return families
