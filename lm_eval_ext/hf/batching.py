"""PURE: how scoring and generation requests become batches (no torch in here).

Loglikelihood requests are packed as *prefix trees*: requests are sorted by their input tokens, so
requests that share a context (the choices of one multiple-choice item, a few-shot prefix shared by
many items) sit next to each other, and each row of a batch holds a trie of them. A shared prefix
is then one set of nodes computed once; each node attends only to its ancestors (see
``scoring.tree_attention_mask``) and sits at position = its depth, which is exactly the position it
has in the unshared sequence. A row that holds one request is the stock layout.

Worked example (``max_batch_tokens=12``, ``row_tokens=8``)::

    a = [5, 6, 7] + [1]      b = [5, 6, 7] + [2]     c = [5, 6, 9]
    sorted inputs a, b, c -> one row: 5 6 7 1 2 9  (6 nodes: 5 6 7 shared by all three,
    1 and 2 hang under 7, 9 under 6); a batch is rows padded to its longest row, and
    rows x padded length must stay <= max_batch_tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

#: Longest packed row we build on purpose. A packed row is attended densely (a custom mask rules
#: out fused causal kernels), so attention work grows with row length squared; for models of
#: the SmolLM2/Llama shape the attention share stays near 15 % at 512 tokens while a shared
#: few-shot prefix is still amortised over ~10 items. A single request longer than this gets
#: its own row of its own length.
DEFAULT_ROW_TOKENS = 512


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

    @property
    def useful_tokens(self) -> int:
        return len(self.input_tokens)


@dataclass
class Row:
    """A prefix tree flattened in insertion order (a parent always precedes its children)."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)  # -1 for a root
    depths: list[int] = field(default_factory=list)
    #: per request: (request, node index of each input position that predicts a continuation token)
    targets: list[tuple[ScoreRequest, list[int]]] = field(default_factory=list)
    #: node path of the last request inserted, to share its prefix with the next one
    _last_path: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def added_tokens(self, request: ScoreRequest, share: bool) -> int:
        """Nodes that inserting ``request`` would add (sorted insertion: the previous path holds
        the longest common prefix with any request already in the row)."""
        if not share or not self.targets:
            return len(request.input_tokens)
        prev = self.targets[-1][0].input_tokens
        return len(request.input_tokens) - common_prefix_tokens(prev, request.input_tokens)

    def insert(self, request: ScoreRequest, share: bool) -> None:
        shared = 0
        if share and self.targets:
            shared = common_prefix_tokens(self.targets[-1][0].input_tokens, request.input_tokens)
        path = self._last_path[:shared]
        for depth in range(shared, len(request.input_tokens)):
            self.parents.append(path[-1] if path else -1)
            self.depths.append(depth)
            self.tokens.append(request.input_tokens[depth])
            path.append(len(self.tokens) - 1)
        num_scored = len(request.continuation_tokens)
        self.targets.append((request, path[len(path) - num_scored :]))
        self._last_path = path


@dataclass
class Batch:
    rows: list[Row]

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


def pack_rows(
    requests: Sequence[ScoreRequest], *, row_tokens: int, share: bool
) -> list[Row]:
    """Sort by input tokens and fill rows up to ``row_tokens`` nodes (one request per row when
    ``share`` is off). A request never spans two rows."""
    ordered = sorted(requests, key=lambda r: (r.input_tokens, r.continuation_tokens, r.index))
    rows: list[Row] = []
    current = Row()
    for request in ordered:
        grow = current.added_tokens(request, share)
        if current.targets and (not share or len(current) + grow > row_tokens):
            rows.append(current)
            current = Row()
        current.insert(request, share)
    if current.targets:
        rows.append(current)
    return rows


def pack_batches(
    rows: Sequence[Row], *, max_batch_tokens: int | None, max_batch_requests: int | None = None
) -> list[Batch]:
    """Longest rows first; each batch holds rows while rows x longest <= ``max_batch_tokens``
    and (if given) its requests <= ``max_batch_requests``. A row over budget travels alone."""
    ordered = sorted(rows, key=len, reverse=True)
    batches: list[Batch] = []
    current: list[Row] = []
    num_requests = 0
    for row in ordered:
        longest = len(current[0]) if current else len(row)
        fits_tokens = max_batch_tokens is None or (len(current) + 1) * longest <= max_batch_tokens
        fits_count = max_batch_requests is None or num_requests + len(row.targets) <= max_batch_requests
        if current and not (fits_tokens and fits_count):
            batches.append(Batch(current))
            current, num_requests = [], 0
        current.append(row)
        num_requests += len(row.targets)
    if current:
        batches.append(Batch(current))
    return batches


def split_batch(batch: Batch, *, row_tokens: int, share: bool) -> list[Batch]:
    """Split-on-OOM policy: halve the rows; a single row is re-packed at half its length; a
    single request cannot be split (``[]`` tells the caller to give up on this request)."""
    if len(batch.rows) > 1:
        half = len(batch.rows) // 2
        return [Batch(batch.rows[:half]), Batch(batch.rows[half:])]
    row = batch.rows[0]
    if len(row.targets) == 1:
        return []
    smaller = max(1, min(row_tokens, len(row)) // 2)
    rows = pack_rows([r for r, _ in row.targets], row_tokens=smaller, share=share)
    if len(rows) == 1:  # every request alone already exceeds half: one request per row
        rows = pack_rows([r for r, _ in row.targets], row_tokens=smaller, share=False)
    return [Batch([r]) for r in rows]


def lowered_budget(budget_tokens: int, failed_batch_tokens: int) -> int:
    """Budget after an OOM at ``failed_batch_tokens``: below what failed, never below one row."""
    return max(1, min(budget_tokens, failed_batch_tokens) * 3 // 4)


@dataclass(frozen=True)
class GenerationRequest:
    index: int
    prompt_tokens: tuple[int, ...]


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
