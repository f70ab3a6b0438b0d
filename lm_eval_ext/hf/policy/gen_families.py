"""PURE: which generation requests share a prompt prefix computed once per call.

Two kinds of sharing, both computed once and read by every row that continues them (the KV of a
shared prefix is never copied per row, see ``compute/slots.py``):

- *repeats*: identical prompts (lm-eval's ``repeats: N``, e.g. 64 samples of one question for
  ``gsm8k_cot_self_consistency``) share the whole prompt but its last token, which each row
  feeds itself to get its first distribution;
- *few-shot families*: distinct prompts that continue one long common head (``gsm8k_cot``'s
  8 fixed examples, ``bbh_cot_fewshot_*``, ``minerva_math``), found as for scoring
  (``policy/families.py``): items in sorted order join the open family while the shared head stays
  >= ``MIN_GENERATION_PREFIX_TOKENS`` and the family's saving does not shrink.

Repeats win over a few-shot family: two questions x 64 samples after the same 8-shot block prefill
the block twice (once per question, ~2 x 860 tokens) and nothing else, instead of the block once
and each question 64 times (~800 + 128 x 60 tokens).

Worked example: prompts ``A = h + a``, ``B = h + b``, ``C = c`` with a 300-token head ``h`` and
``A`` repeated 3 times -> a family ``prefix = A[:-1]`` with 3 rows (own prompt: ``A[-1:]``), a
family ``prefix = ()`` holding ``B`` and ``C`` whole (``B`` alone cannot share ``h`` with anyone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lm_eval_ext.hf.policy.batching import ScoreRequest
from lm_eval_ext.hf.policy.families import split_families

#: a shared head this long becomes a family. Lower than scoring's ``MIN_PREFIX_TOKENS`` (64): a
#: generation row's prompt is prefilled once, so sharing a head saves ``(rows - 1) x head`` prefill
#: tokens against one extra attention read per decode step, which a short head makes cheap.
#: Measured on the shipped ``ext_copy_gen`` (30 prompts sharing 47 of ~53 tokens, SmolLM2-135M,
#: 2-core CPU): 3.8 s unshared, see the commit for the shared figure.
MIN_GENERATION_PREFIX_TOKENS = 16


@dataclass(frozen=True)
class GenerationFamily:
    """Requests (by index) continuing ``prefix``; each row computes ``prompt[len(prefix):]``."""

    prefix: tuple[int, ...]
    members: tuple[int, ...]


def generation_families(prompts: Sequence[Sequence[int]], *,
                        min_prefix_tokens: int = MIN_GENERATION_PREFIX_TOKENS) -> list[GenerationFamily]:
    """Families of the requests ``0 .. len(prompts) - 1``, in sorted prompt order; a request with
    a one-token prompt, or sharing nothing, lands in the family with the empty prefix."""
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_prompt.setdefault(tuple(prompt), []).append(index)
    families: list[GenerationFamily] = []
    singles: list[ScoreRequest] = []
    for prompt, members in sorted(by_prompt.items()):
        if len(members) >= 2 and len(prompt) >= 2:
            families.append(GenerationFamily(prompt[:-1], tuple(members)))
        else:
            # a prompt as a scoring request whose one "continuation" token is its last: a family
            # prefix then always leaves that token to the row
            singles.extend(ScoreRequest(i, prompt, prompt[-1:]) for i in members)
    for family in split_families(singles, min_prefix_tokens=min_prefix_tokens) if singles else []:
        families.append(GenerationFamily(family.prefix, tuple(r.index for r in family.requests)))
    return families
