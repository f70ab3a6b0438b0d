"""PURE: how ``vllm_ext`` scores loglikelihood requests through vLLM's prefix cache, as arithmetic.

What vLLM does (0.32, V1 engine), which everything here rests on:

- Its prefix cache holds whole KV blocks, each named by its tokens and every token before it. A
  request reads at most ``len(prompt) - 1`` tokens from it, in whole blocks (``num_cached_tokens``).
- A block is cached when it is *scheduled*: a request scheduled after it, in the same engine step or
  a later one, reads it. So an item's first choice computes the context and its other choices, sent
  in the same engine call right behind it, read the context's whole blocks. No extra request is
  needed for reuse (:func:`warm_up_pays` says when one still pays).
- The logprob of prompt token ``j`` comes from position ``j - 1``: a choice must compute every
  position from ``context_len - 1`` on, so it may read at most :func:`reusable_blocks` blocks.

A choice whose first continuation tokens equal an earlier choice's can read more: the block that
holds the context's end and those tokens was cached whole by the earlier choice, and the positions
that predict its first continuation tokens were never computed. Its own output still has every
logprob past its cached tokens; the missing ones come from *probes* (:func:`probe_lengths`): a probe
is the choice's first ``m * block`` tokens, which vLLM must compute from ``(m - 1) * block`` on (it
reads at most ``len - 1`` tokens), giving the missing prompt logprobs and, from its one generated
token's logprobs, the logprob of token ``m * block``. A probe computes one block, so a repaired
choice costs the same tokens as any other choice (:func:`merged_prompt_logprobs` puts them together).

:func:`minimal_tokens` is the least any scorer computes at a block size: every distinct whole block
of the requests' reusable prefixes once, and every request from its last reusable block on. Stock
tokens over minimal tokens is the *token bound* of the cost report
(:mod:`lm_eval_ext.backend.cost_report`): the speedup that computing fewer tokens can give.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def truncate_for_scoring(context: Sequence[int], continuation: Sequence[int], max_length: int) -> tuple[list[int], int]:
    """The tokens vLLM scores and how many of them are context, as stock does it: keep the last
    ``max_length - 1`` tokens (vLLM needs room for one generated token). Example: context of 6,
    continuation of 3, max_length 8 -> last 7 tokens, context length 4."""
    max_context_tokens = max_length - 1
    tokens = (list(context) + list(continuation))[-max_context_tokens:]
    context_len = len(context) - max(0, len(context) + len(continuation) - max_context_tokens)
    return tokens, context_len


def grouped_order(group_keys: Sequence[Any]) -> list[int]:
    """Indices with equal keys adjacent, groups in order of first appearance (stable)."""
    first_seen: dict[Any, int] = {}
    for index, key in enumerate(group_keys):
        first_seen.setdefault(key, index)
    return sorted(range(len(group_keys)), key=lambda i: (first_seen[group_keys[i]], i))


def reusable_blocks(context_len: int, block_size: int) -> int:
    """Whole KV blocks of a context a choice can read from the cache: position ``context_len - 1``
    predicts the first continuation token, so it must be computed. Example: block 32, 64 -> 1."""
    return (context_len - 1) // max(block_size, 1)


def first_scored_position(context_len: int) -> int:
    """The first position whose logprob scoring reads (it predicts the first continuation token)."""
    return max(context_len - 1, 0)


@dataclass(frozen=True)
class WarmupCosts:
    """What a warm-up request weighs against, in computed-token equivalents."""

    request_tokens: float
    """One extra request (scheduling, inputs, outputs), in tokens of forward work."""
    head_row_tokens: float
    """The LM head and log-softmax at one position that gets prompt logprobs; 0 when the engine
    computes them only from :func:`scored_from` on (``vllm_ext``'s runner, see ``prompt_logprobs.py``)."""


def head_row_tokens(hidden_size: int, vocab_size: int, num_layers: int, intermediate_size: int,
                    kv_size: int) -> float:
    """The LM head at one position over one token of the decoder body, by multiply-adds: ``vocab x
    hidden`` over ``layers x hidden x (2 hidden + 2 kv + 3 intermediate)``. Example: SmolLM2-135M
    (576 hidden, 49152 vocabulary, 30 layers, 1536 intermediate, 192 kv) -> 49152 / 184320 = 0.27."""
    body = num_layers * (2 * hidden_size + 2 * kv_size + 3 * intermediate_size)
    return vocab_size / max(body, 1)


def warm_up_pays(context_len: int, block_size: int, costs: WarmupCosts) -> bool:
    """Whether computing a context's whole blocks first, with no logprobs, saves work.

    Tokens are the same either way: the blocks are computed once, by the warm-up or by the item's
    first choice. What a warm-up saves is the LM head at the first choice's context rows, which an
    engine computing prompt logprobs at every computed position pays; it costs one more request,
    whose one generated token needs a head row too. Worth it iff
    ``reusable_blocks * block * head_row > request + head_row``.

    Example: SmolLM2-135M (head row 0.27), 32-token blocks, a request worth 1 token: a 181-token
    context saves 5 x 32 x 0.27 = 43 > 1.27 -> warm; a 40-token one saves 8.6 -> warm; with
    ``vllm_ext``'s runner (head rows only from the context's last position on) it saves 0 -> never.
    """
    saved = reusable_blocks(context_len, block_size) * block_size * costs.head_row_tokens
    return saved > costs.request_tokens + costs.head_row_tokens


def warm_prompt(context: Sequence[int], block_size: int) -> list[int]:
    """What a context's warm-up computes: the whole KV blocks its choices may reuse, no more.
    vLLM caches whole blocks only, so warming the context's tail would be computed for nothing;
    and a warm-up that cached a context ending on a block boundary whole would cache the position
    that predicts the first continuation token, which must be computed. Example: block 32, a
    70-token context -> its first 64 tokens; 64 tokens -> 32."""
    return list(context[: block_size * reusable_blocks(len(context), block_size)])


class BlockNames:
    """Whole blocks of token prefixes, each named by its parent's name and its own tokens (the way
    vLLM chains block hashes), so two prompts share a block iff they share every token up to its end."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._names: dict[tuple[int, tuple[int, ...]], int] = {}

    def add(self, tokens: Sequence[int], num_blocks: int) -> int:
        """Name the first ``num_blocks`` blocks of ``tokens``; returns how many were new."""
        parent, new = -1, 0
        for start in range(0, num_blocks * self.block_size, self.block_size):
            key = (parent, tuple(tokens[start:start + self.block_size]))
            if key not in self._names:
                self._names[key] = len(self._names)
                new += 1
            parent = self._names[key]
        return new


def minimal_tokens(prompts: Sequence[Sequence[int]], context_lens: Sequence[int], block_size: int) -> list[int]:
    """Per request, the prompt tokens it must compute at the least, at ``block_size`` (0: no prefix
    cache): its tokens past its last reusable block, plus each reusable block no earlier request has.

    Example: block 32, two choices of a 181-token context with 4-token answers: 185 and 25
    (5 blocks + 25 tokens, then 25); stock computes 185 each, so the token bound is 370 / 210 = 1.76x.
    """
    if not block_size:
        return [len(prompt) for prompt in prompts]
    names = BlockNames(block_size)
    out = []
    for prompt, context_len in zip(prompts, context_lens, strict=True):
        blocks = reusable_blocks(context_len, block_size)
        out.append(len(prompt) - blocks * block_size + names.add(prompt, blocks) * block_size)
    return out


def uncovered(context_len: int, cached_tokens: int) -> range:
    """Continuation token indices whose logprobs a request's own output lacks: those predicted by
    positions it read from the cache. Example: context 181, 192 cached -> 181..192 (12 indices)."""
    return range(context_len, cached_tokens + 1) if cached_tokens >= max(context_len, 1) else range(0)


def probe_lengths(context_len: int, cached_tokens: int, block_size: int) -> list[int]:
    """Prompt lengths of the probes that cover :func:`uncovered`: ``m * block`` for every block from
    the one holding index ``context_len`` to the one ending at ``cached_tokens``. A probe of ``m``
    blocks is computed from ``(m - 1) * block`` on (vLLM reads at most ``len - 1`` tokens), so it
    gives indices ``(m - 1) * block + 1 .. m * block``.

    Example: block 32, context 181, 192 cached (an earlier choice began with the same 11 tokens):
    one probe of 192 tokens, computed from 160: indices 161..192. A context of 64 tokens that an
    earlier, longer prompt cached whole (64 cached): one probe of 64 tokens, from 32.
    """
    first = -(-context_len // block_size)
    return [m * block_size for m in range(first, cached_tokens // block_size + 1)]


#: vLLM 0.32's ``MAX_LOGPROB_TOKEN_IDS``: tokens one request may ask logprobs of at its generated position
MAX_PROBE_TOKENS = 128


@dataclass
class ProbeRequest:
    """One probe prompt, the tokens that follow it in the requests it repairs, and those requests."""

    first: int
    prompt: tuple[int, ...]
    targets: list[int]
    repairs: list[int]


def probe_requests(needs: Sequence[tuple[int, Sequence[int], int]]) -> list[ProbeRequest]:
    """``(request, probe prompt, token after it)`` -> one probe per distinct prompt, asking for every
    distinct following token (at most :data:`MAX_PROBE_TOKENS` per probe). Choices that share the
    block holding their context's end share its probe: on a block boundary, all of an item's."""
    probes: dict[tuple[int, ...], list[ProbeRequest]] = {}
    for index, prompt, target in needs:
        same = probes.setdefault(tuple(prompt), [])
        probe = next((p for p in same if target in p.targets), None)
        if probe is None:
            if not same or len(same[-1].targets) >= MAX_PROBE_TOKENS:
                same.append(ProbeRequest(index, tuple(prompt), [], []))
            probe = same[-1]
            probe.targets.append(target)
        probe.repairs.append(index)
    return [probe for same in probes.values() for probe in same]


@dataclass(frozen=True)
class Probe:
    """A probe's output: ``prompt_logprobs`` (stock's shape, rows it did not compute None or
    unread), ``num_cached_tokens``, and ``sample_logprobs``: its generated position's logprobs,
    ``{token: logprob}``, holding the token that follows its prompt in the probed request."""

    length: int
    output: Any


def merged_prompt_logprobs(tokens: Sequence[int], context_len: int, own: Any,
                           probes: Sequence[Probe] = ()) -> list[Mapping[int, float] | None] | None:
    """Prompt logprobs of every continuation token of ``tokens`` (stock's shape: index ``j`` holds
    ``{token: logprob}`` for prompt token ``j``, the prompt token first), from the request's own
    output and its probes'; None when some continuation index has none (the request is then scored
    again without the cache). Earlier indices are None: scoring reads only the continuation.

    ``own`` and each probe's output have ``prompt_logprobs`` and ``num_cached_tokens``; a row counts
    only where the engine computed it (past its cached tokens).
    """
    merged: list[Mapping[int, float] | None] = [None] * len(tokens)
    sources = [(own, len(tokens))] + [(p.output, p.length) for p in probes]
    for output, length in sources:
        for index in range(max(context_len, output.num_cached_tokens + 1), length):
            if merged[index] is None and output.prompt_logprobs[index] is not None:
                merged[index] = output.prompt_logprobs[index]
    for probe in probes:
        index = probe.length
        sample = probe.output.sample_logprobs or {}
        if index < len(tokens) and merged[index] is None and tokens[index] in sample:
            merged[index] = {tokens[index]: sample[tokens[index]], **sample}  # the prompt token first, as stock's
    if any(merged[index] is None for index in range(context_len, len(tokens))):
        return None
    return merged


def group_cost_tokens(prompts: Sequence[Sequence[int]], keys: Sequence[Hashable], context_lens: Sequence[int],
                      block_size: int) -> list[int]:
    """Per request, the tokens it costs when its group is scored together (the first of a group
    computes its whole prompt, the others from their last reusable block): what data parallel
    replicas are balanced by."""
    seen: set[Hashable] = set()
    out = []
    for prompt, key, context_len in zip(prompts, keys, context_lens, strict=True):
        reused = reusable_blocks(context_len, block_size) * block_size if key in seen and block_size else 0
        seen.add(key)
        out.append(len(prompt) - reused)
    return out
