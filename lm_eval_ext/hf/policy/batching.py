"""PURE: how scoring and generation requests become batches (no torch in here).

Loglikelihood requests are packed as *prefix trees*. Requests are sorted by their input tokens and
grouped into *items*: the requests that share one context (the choices of one multiple-choice
item). An item is always one tree in one row: its context nodes are computed once and each choice
hangs under them. Each node attends only to its ancestors (``scoring.tree_attention_mask``) and
sits at position = its depth, exactly its position in the unshared sequence. A row holding one
request is the stock layout.

Whether *different* items share a row is decided by a cost model, because sharing is not free:
a row that is a plain chain runs with causal attention (the fused kernel skips the masked half),
while a tree row needs a dense ``[width, width]`` mask that every layer reads, and the attention
of each of its nodes spans the whole row. In units of "one token through the decoder's linear
layers", a row of ``W`` nodes costs::

    cost(W) = W + a * W**2       a = CostModel.chain_pair_tokens   (chain, causal kernel)
                                 a = CostModel.masked_pair_tokens  (tree, 4D mask)

An item of ``n`` nodes joins the current row (``W`` nodes, ``s`` of the item's nodes already there:
its common prefix with the row's last request) only when that is cheaper than its own row::

    cost_masked(W + n - s) - cost_row(W)  <  (1 - f) * cost_item(n)     f = min_saving_fraction

and the row stays within ``row_tokens``. The margin ``f`` (a quarter) pays for what a row's own
cost cannot see: a wider row pads the shorter rows batched with it. Worked examples with
SmolLM2-135M's measured constants (chain 2.0e-4, masked 5.0e-4; see :class:`CostModel`):

- ARC-Easy 0-shot: items of ``n = 30`` nodes share ``s = 2`` template tokens ("Question:"). With a
  (masked) row of ``W = 120``: ``28 + 5e-4 * (148**2 - 120**2)`` = 31.8 against
  ``0.75 * (30 + 5e-4 * 30**2)`` = 22.8 for its own row (multi-token choices make it a tree): every
  item gets its own row, and its choices still share its question.
- MMLU 5-shot (``first_n``): every item continues one few-shot head of ``P`` ~ 330 tokens. Such
  a head never reaches this rule: ``families.py`` computes it once for the whole call and the
  items (~55 new tokens each) are packed here as rows of their own after it. Without families
  (a model whose cache cannot be shared) the rule fills masked rows up to ``row_tokens``: adding
  an item of ``q = 100`` to a row of ``W`` costs ``100 + 5e-4 * (200 W + 100**2)`` against
  ``0.75 * (430 + 2e-4 * 430**2)`` = 350 alone, so items join while ``W`` < ~2,400.
- Rolling windows: a request whose context is one token (a rolling window, or an empty context
  given the prefix token) is an item of its own: the windows of many documents would otherwise
  all be one "item" under that token. They share one token at most, so each gets its own row;
  rows are batched longest first and long rows only with rows of nearly their length
  (:func:`pack_batches`), so padding stays near zero. Packing several windows into one
  block-diagonal row would need the dense mask, measured 3-27 % slower per token than causal
  attention at 256-2,048 tokens (the end-to-end comparison was not run).

A batch is rows padded to its longest row; rows x padded length stays <= ``max_batch_tokens``::

    a = [5, 6, 7] + [1]      b = [5, 6, 7] + [2]     c = [5, 6, 9]
    sorted inputs a, b, c -> one row: 5 6 7 9 (a and b are one item; c shares 5 6, a saving of
    2 of its 3 tokens that outweighs the mask)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lm_eval_ext.hf.policy.sampling import SamplingSettings

#: Longest packed row we build on purpose (a single item longer than this gets its own row of
#: its own length). Past ~1,000 tokens a masked row's attention grows faster than sharing saves
#: (measured here: 758 tokens/s at 512, 647 at 1,024, 454 at 2,048 for the decoder with a 4D mask)
#: and its mask and scores grow with the square of the width.
DEFAULT_ROW_TOKENS = 1024

#: What one more forward costs beyond its tokens, in tokens. SmolLM2-135M's decoder on the
#: 2-core CPU, rows of 40 tokens, median of 5 interleaved timings: 16 rows 657 ms, 32 rows
#: 1,295 ms, i.e. ~1.0 ms a token and ~20 ms (20 tokens) per forward. (192, the earlier value,
#: was fitted on a noisier A/B and made the cut accept 12 % padding on ARC-Easy: 7 batches of
#: 24-165-token rows. At 32: 16 batches, 3.5 % padding, and the engine's share of the decoder's
#: ceiling went from 79-83 % to 85-86 % there and from 94 % to 97 % on LAMBADA, measured by
#: the ``engine-ceiling`` scenario of ``benchmarks/run.py``.)
BATCH_OVERHEAD_TOKENS = 32
#: A forward costs at least this many tokens' time, however few it holds: below it the decoder
#: is bound by streaming its weights, not by its tokens (SmolLM2-135M here: 1 row of 40 tokens
#: 103 ms, 2 rows 110 ms, 4 rows 180 ms, 16 rows 657 ms, i.e. ~1 ms a token past ~150 tokens).
BATCH_FLOOR_TOKENS = 128
#: Most rows one batch holds (bounds the batch-cut search to rows x this many steps).
MAX_BATCH_ROWS = 512


@dataclass(frozen=True)
class CostModel:
    """Attention cost per (query node, key node) pair, in units of one token through the linear
    layers. Defaults measured on the project's CPU with SmolLM2-135M float32 (decoder at 256 to
    2,048 tokens per row, 4,096 tokens per batch): 841 -> 625 tokens/s causal, 820 -> 454 masked.
    """

    chain_pair_tokens: float = 2.0e-4
    masked_pair_tokens: float = 5.0e-4
    #: A join must save this fraction of the item's own-row cost: a longer row also pads the
    #: shorter rows of its batch, which the row's own cost does not see.
    min_saving_fraction: float = 0.25

    def row_cost(self, width: int, masked: bool) -> float:
        pair = self.masked_pair_tokens if masked else self.chain_pair_tokens
        return width + pair * width * width


@dataclass(frozen=True)
class ScoreRequest:
    """One loglikelihood request in model-input form.

    ``input_tokens`` is what the model reads (context + continuation, truncated on the left to
    the model window, last token dropped); the last ``len(continuation_tokens)`` input positions
    predict the continuation.
    """

    index: int
    input_tokens: tuple[int, ...]
    continuation_tokens: tuple[int, ...]
    #: positions before ``input_tokens``: those tokens are the batch's shared prefix, computed
    #: once and read from its KV cache (``families.py``); 0 for a whole request
    offset: int = 0

    @property
    def useful_tokens(self) -> int:
        return self.offset + len(self.input_tokens)

    @property
    def context_tokens(self) -> tuple[int, ...]:
        """The input up to and including the position that predicts the first continuation token."""
        return self.input_tokens[: len(self.input_tokens) - len(self.continuation_tokens) + 1]


def score_request(index: int, context_tokens, continuation_tokens, max_length: int) -> ScoreRequest:
    """Stock ``HFLM._loglikelihood_tokens``'s model input: context + continuation, the last
    ``max_length + 1`` tokens kept, the last token dropped. Example: max_length 4, context
    ``[1, 2, 3]``, continuation ``[4, 5]`` -> input ``(2, 3, 4)``, scoring ``(4, 5)``."""
    if not context_tokens or not continuation_tokens or len(continuation_tokens) > max_length:
        raise ValueError(f"request {index}: empty context/continuation or continuation "
                         f"longer than max_length={max_length}")
    whole = (list(context_tokens) + list(continuation_tokens))[-(max_length + 1):][:-1]
    return ScoreRequest(index, tuple(whole), tuple(continuation_tokens))


@dataclass
class Row:
    """A prefix tree flattened in insertion order (a parent always precedes its children).

    Each inserted request adds one contiguous *segment* of nodes, a chain hanging under one
    node already in the row; masks are built per segment, not per node.
    """

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)  # -1 for a root
    depths: list[int] = field(default_factory=list)
    #: per request: (request, node index of each input position that predicts a continuation token)
    targets: list[tuple[ScoreRequest, list[int]]] = field(default_factory=list)
    #: (first node, end node, parent of the first node or -1) of each segment
    segments: list[tuple[int, int, int]] = field(default_factory=list)
    #: node path of the last request inserted, to share its prefix with the next one
    _last_path: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def is_chain(self) -> bool:
        """Every node's parent is the node before it: causal attention is the ancestor relation."""
        return all(parent == start - 1 for start, _, parent in self.segments)

    def shared_tokens(self, request: ScoreRequest, share: bool) -> int:
        """Nodes of ``request`` already in the row (sorted insertion: the previous path holds
        the longest common prefix with any request already in the row)."""
        if not share or not self.targets:
            return 0
        return common_prefix_tokens(self.targets[-1][0].input_tokens, request.input_tokens)

    def added_tokens(self, request: ScoreRequest, share: bool) -> int:
        return len(request.input_tokens) - self.shared_tokens(request, share)

    def insert(self, request: ScoreRequest, share: bool) -> None:
        shared = self.shared_tokens(request, share)
        path = self._last_path[:shared]
        start = len(self.tokens)
        new = len(request.input_tokens) - shared
        if new:
            self.segments.append((start, start + new, path[-1] if path else -1))
            self.parents.extend([path[-1] if path else -1] + list(range(start, start + new - 1)))
            self.depths.extend(range(request.offset + shared, request.offset + len(request.input_tokens)))
            self.tokens.extend(request.input_tokens[shared:])
            path = path + list(range(start, start + new))
        num_scored = len(request.continuation_tokens)
        self.targets.append((request, path[len(path) - num_scored :]))
        self._last_path = path


@dataclass
class Batch:
    rows: list[Row]
    #: tokens every row continues (a few-shot prefix): computed once per family, not per row
    prefix: tuple[int, ...] = ()

    @property
    def padded_tokens(self) -> int:
        return len(self.rows) * max(len(row) for row in self.rows)

    @property
    def computed_tokens(self) -> int:
        return sum(len(row) for row in self.rows)

    @property
    def useful_tokens(self) -> int:
        """Tokens the unshared, unpadded layout would compute for these requests."""
        return sum(r.useful_tokens for row in self.rows for r, _ in row.targets)

    @property
    def num_requests(self) -> int:
        return sum(len(row.targets) for row in self.rows)

    def requests(self) -> list[ScoreRequest]:
        return [r for row in self.rows for r, _ in row.targets]


def common_prefix_tokens(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def group_items(requests: Sequence[ScoreRequest]) -> list[list[ScoreRequest]]:
    """Sorted requests grouped by context, groups in the order of their first request. A
    one-token context (rolling windows, empty contexts) makes an item of its own."""
    ordered = sorted(requests, key=lambda r: (r.input_tokens, r.continuation_tokens, r.index))
    groups: dict[object, list[ScoreRequest]] = {}
    for request in ordered:
        context = request.context_tokens
        key = context if len(context) > 1 else ("alone", request.index)
        groups.setdefault(key, []).append(request)
    return list(groups.values())


def item_tree(item: Sequence[ScoreRequest]) -> Row:
    row = Row()
    for request in item:
        row.insert(request, share=True)
    return row


def joins_row(row: Row, item: Row, shared: int, cost: CostModel) -> bool:
    """The cost rule of the module docstring: is adding ``item`` to ``row`` cheaper than its own row?"""
    width = len(row) + len(item) - shared
    extends_chain = row.is_chain and item.is_chain and shared == len(row) and shared > 0
    merged = cost.row_cost(width, masked=not extends_chain)
    alone = cost.row_cost(len(item), masked=not item.is_chain)
    return merged - cost.row_cost(len(row), masked=not row.is_chain) < (1 - cost.min_saving_fraction) * alone


def pack_rows(
    requests: Sequence[ScoreRequest], *, row_tokens: int, share: bool, cost: CostModel | None = None
) -> list[Row]:
    """Group requests into items (one tree each) and put items together in a row only when the
    cost rule says so and the row stays within ``row_tokens``; ``share=False``: one request per
    row (the stock layout). An item never spans two rows."""
    cost = cost or CostModel()
    if not share:
        ordered = sorted(requests, key=lambda r: (r.input_tokens, r.continuation_tokens, r.index))
        return [item_tree([r]) for r in ordered]
    rows: list[Row] = []
    current = Row()
    for item in group_items(requests):
        tree = item_tree(item)
        shared = current.shared_tokens(item[0], share=True)
        fits = len(current) + len(tree) - shared <= row_tokens
        if current.targets and not (fits and joins_row(current, tree, shared, cost)):
            rows.append(current)
            current = Row()
        for request in item:
            current.insert(request, share=True)
    if current.targets:
        rows.append(current)
    return rows


def pack_batches(
    rows: Sequence[Row], *, max_batch_tokens: int | None, max_batch_requests: int | None = None,
    overhead_tokens: int | None = None, prefix: tuple[int, ...] = (),
) -> list[Batch]:
    """Cut the rows, longest first, into batches of at most ``max_batch_tokens`` padded tokens
    (rows x longest) and (if given) ``max_batch_requests`` requests; a row over budget travels
    alone.

    Padding costs as much as a real token, every forward a fixed overhead
    (:data:`BATCH_OVERHEAD_TOKENS`) and at least :data:`BATCH_FLOOR_TOKENS`, so the cut points
    minimise the sum over batches of ``max(padded tokens, floor) + overhead`` (dynamic
    programming over the sorted rows) instead of filling each batch greedily: a batch of rows
    of 90 and 25 tokens would pad the short ones to 90. Every batch
    continues ``prefix`` (the rows' shared few-shot prefix, if any).
    """
    ordered = sorted(rows, key=len, reverse=True)
    overhead = BATCH_OVERHEAD_TOKENS if overhead_tokens is None else overhead_tokens
    n = len(ordered)
    suffix = [float("inf")] * n + [0.0]  # suffix[i]: least cost of packing ordered[i:]
    cut = [n] * n
    for i in range(n - 1, -1, -1):
        longest, num_requests = len(ordered[i]), 0
        for j in range(i, min(n, i + MAX_BATCH_ROWS)):
            num_requests += len(ordered[j].targets)
            over_tokens = max_batch_tokens is not None and (j - i + 1) * longest > max_batch_tokens
            over_count = max_batch_requests is not None and num_requests > max_batch_requests
            if j > i and (over_tokens or over_count):
                break
            total = max((j - i + 1) * longest, BATCH_FLOOR_TOKENS) + overhead + suffix[j + 1]
            if total <= suffix[i]:  # ties: the larger batch first, as greedy filling would
                suffix[i], cut[i] = total, j + 1
    batches, i = [], 0
    while i < n:
        batches.append(Batch(ordered[i : cut[i]], prefix))
        i = cut[i]
    return batches


def split_batch(batch: Batch, *, row_tokens: int, share: bool) -> list[Batch]:
    """Split-on-OOM policy: halve the rows; a row of several items is re-packed one item per
    row; a single item is split into single requests (its sharing is lost, its results are
    not); a single request cannot be split (``[]`` tells the caller to give up on it)."""
    if len(batch.rows) > 1:
        half = len(batch.rows) // 2
        return [Batch(batch.rows[:half], batch.prefix), Batch(batch.rows[half:], batch.prefix)]
    row = batch.rows[0]
    if len(row.targets) == 1:
        return []
    requests = [r for r, _ in row.targets]
    items = group_items(requests) if share else [[r] for r in requests]
    if len(items) == 1:
        items = [[r] for r in requests]
    return [Batch([item_tree(item)], batch.prefix) for item in items]


def lowered_budget(budget_tokens: int, failed_batch_tokens: int) -> int:
    """Budget after an OOM at ``failed_batch_tokens``: below what failed, never below one row."""
    return max(1, min(budget_tokens, failed_batch_tokens) * 3 // 4)


@dataclass(frozen=True)
class GenerationRequest:
    index: int
    prompt_tokens: tuple[int, ...]
    max_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    """stop strings: a row stops once its text holds one (lm-eval cuts the text there)"""
    sampling: SamplingSettings | None = None
    """how it samples; None: greedy"""
    seed: int | None = None
    """its own generator's seed (``policy/sampling.request_seed``), with ``sampling``"""


def pack_generation(
    requests: Sequence[GenerationRequest],
    *,
    max_gen_tokens: int,
    max_batch_tokens: int | None,
    max_batch_requests: int | None = None,
) -> list[list[GenerationRequest]]:
    """Sort by prompt tokens (neighbours share prefixes) and cut batches whose padded size
    ``rows x (longest prompt + max_gen_tokens)`` stays within ``max_batch_tokens``."""
    ordered = sorted(requests, key=lambda r: (r.prompt_tokens, r.index))
    batches: list[list[GenerationRequest]] = []
    current: list[GenerationRequest] = []
    longest = 0
    for request in ordered:
        width = max(longest, len(request.prompt_tokens)) + max_gen_tokens
        fits_tokens = max_batch_tokens is None or (len(current) + 1) * width <= max_batch_tokens
        fits_count = max_batch_requests is None or len(current) < max_batch_requests
        if current and not (fits_tokens and fits_count):
            batches.append(current)
            current, longest = [], 0
        current.append(request)
        longest = max(longest, len(request.prompt_tokens))
    if current:
        batches.append(current)
    return batches
