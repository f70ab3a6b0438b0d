"""PURE: the tokens ``hf_ext`` computes for one call, per task, from the engine's own policy code.

One function per request type, over the requests the engine receives (``hf/requests.py`` makes
them with stock's encoding), so ``lm-eval-ext plan --tasks`` counts the work without weights and a
run's cost report can be checked against the count:

- :func:`count_scoring` (``loglikelihood``; ``loglikelihood_rolling`` is the same over its
  windows): the rows and families the engine builds (:func:`scoring_layout`, which the engine
  itself calls): each row's nodes once, each few-shot prefix once per call. A row's tokens go to
  the tasks of its requests by their share of the row's useful tokens, a prefix's by their share
  of its family's (:func:`row_tokens_by_task`, :func:`prefix_tokens_by_task`; the engine's cost
  report attributes with the same two functions, so per-task counts do not depend on how rows
  were cut into batches). Padding is not counted: it depends on the token budget.
- :func:`count_generation`: continuous batching as ``hf_ext`` generates: each family's prefix
  (``policy/gen_families.py``: repeats, few-shot heads) prefilled once per call, each row's
  prompt after its family prefix, then one decode token per generated token after the first
  (which the prefill's last position gives). The generated length is not known before the run:
  the count carries a central value (given per request) and the range from one token to
  ``max_new_tokens``.

"Stock" is what the unshared layout computes: each request's whole input (the cost report's
useful tokens), plus the generated tokens for generation; stock's padding is not counted either.

Worked example (scoring): two choices ``[5, 6, 7] + [1]`` and ``[5, 6, 7] + [2]`` of one task are
one item. Their inputs (last token dropped) are ``5 6 7`` each: stock computes 6 tokens, ``hf_ext``
one row of 3 nodes whose last node predicts both choices (a choice's own token is never fed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from lm_eval_ext.backend.work import TokenCount
from lm_eval_ext.hf.policy.batching import Row, ScoreRequest, pack_rows
from lm_eval_ext.hf.policy.families import Family, split_families
from lm_eval_ext.hf.policy.gen_families import GenerationFamily, generation_families


def scoring_layout(requests: Sequence[ScoreRequest], *, share: bool, families: bool,
                   row_tokens: int) -> list[tuple[tuple[int, ...], list[Row]]]:
    """``(prefix, rows)`` per family, exactly as the engine packs a call (``share``: prefix-tree
    rows; ``families``: few-shot prefixes computed once)."""
    grouped = split_families(requests) if share and families else [Family((), tuple(requests))]
    return [(f.prefix, pack_rows(f.requests, row_tokens=row_tokens, share=share)) for f in grouped]


def _split(total: float, weights: Mapping[str, float]) -> dict[str, float]:
    whole = sum(weights.values())
    if not whole:
        return {}
    return {task: total * weight / whole for task, weight in weights.items()}


def row_tokens_by_task(row: Row, tasks: Sequence[str]) -> dict[str, float]:
    """The row's nodes split over its requests' tasks by their useful tokens (``tasks[request.index]``)."""
    useful: dict[str, float] = defaultdict(float)
    for request, _ in row.targets:
        useful[tasks[request.index]] += request.useful_tokens
    return _split(len(row), useful)


def prefix_tokens_by_task(prefix: Sequence[int], rows: Sequence[Row], tasks: Sequence[str]) -> dict[str, float]:
    """A family prefix's tokens split over the tasks of the family's requests by their useful tokens."""
    useful: dict[str, float] = defaultdict(float)
    for row in rows:
        for request, _ in row.targets:
            useful[tasks[request.index]] += request.useful_tokens
    return _split(len(prefix), useful)


def count_scoring(requests: Sequence[ScoreRequest], tasks: Sequence[str],
                  layout: Sequence[tuple[tuple[int, ...], Sequence[Row]]]) -> dict[str, TokenCount]:
    """Per task: requests, context and scored tokens, stock and computed tokens of one call
    whose requests were packed as ``layout`` (:func:`scoring_layout`)."""
    counts: dict[str, TokenCount] = defaultdict(TokenCount)
    for request in requests:
        count = counts[tasks[request.index]]
        count.num_requests += 1
        count.continuation_tokens += len(request.continuation_tokens)
        count.context_tokens += request.useful_tokens - len(request.continuation_tokens) + 1
        count.stock_tokens += request.useful_tokens
    for prefix, rows in layout:
        for task, tokens in prefix_tokens_by_task(prefix, rows, tasks).items():
            counts[task].computed_tokens += tokens
            counts[task].shared_prefix_tokens += tokens
        for row in rows:
            for task, tokens in row_tokens_by_task(row, tasks).items():
                counts[task].computed_tokens += tokens
    for count in counts.values():
        count.close()
    return dict(counts)


def generation_layout(prompts: Sequence[Sequence[int]], *, families: bool) -> list[GenerationFamily]:
    """The families the engine prefills once (all requests in one family of ``()`` without sharing)."""
    if families:
        return generation_families(prompts)
    return [GenerationFamily((), tuple(range(len(prompts))))]


def count_generation(prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], tasks: Sequence[str],
                     generated: Sequence[float], *, families: bool = True) -> dict[str, TokenCount]:
    """Per task: prompts, generation budget, and prefill + decode tokens at the ``generated``
    central length of each request (clipped to ``1 .. max_new_tokens``) and at both ends."""
    counts: dict[str, TokenCount] = defaultdict(TokenCount)
    for family in generation_layout(prompts, families=families):
        members: dict[str, float] = defaultdict(float)
        for index in family.members:
            members[tasks[index]] += 1
        for task, tokens in _split(len(family.prefix), members).items():
            counts[task].prefill_tokens += tokens
            counts[task].shared_prefix_tokens += tokens
        for index in family.members:
            counts[tasks[index]].add_generation(len(prompts[index]), len(prompts[index]) - len(family.prefix),
                                                max_new_tokens[index], generated[index])
    for count in counts.values():
        count.close()
    return dict(counts)
