"""Pure packing rules: prefix trees, token budgets, split-on-OOM policy."""

from __future__ import annotations

import random

import pytest

from lm_eval_ext.hf.policy.batching import (
    BATCH_OVERHEAD_TOKENS, Batch, CostModel, GenerationRequest, ScoreRequest, common_prefix_tokens, group_items, lowered_budget,
    pack_batches, pack_generation, pack_rows, split_batch,
)


def req(index, inputs, cont):
    return ScoreRequest(index, tuple(inputs), tuple(cont))


def test_choices_of_one_item_share_their_context_nodes():
    a, b, c = req(0, [5, 6, 7], [1]), req(1, [5, 6, 7], [2]), req(2, [5, 6, 9], [3])
    (row,) = pack_rows([c, a, b], row_tokens=8, share=True)
    assert row.tokens == [5, 6, 7, 9]  # a and b have the same input: no new nodes for b
    assert row.parents == [-1, 0, 1, 1]
    assert row.depths == [0, 1, 2, 2]
    targets = {r.index: nodes for r, nodes in row.targets}
    assert targets == {0: [2], 1: [2], 2: [3]}


def test_multi_token_continuations_target_their_own_nodes():
    ctx = [9, 8, 7]
    a = req(0, ctx + [1, 2], [1, 2, 3])   # input = ctx + cont[:-1]
    b = req(1, ctx + [4], [4, 5])
    (row,) = pack_rows([a, b], row_tokens=16, share=True)
    nodes = {r.index: n for r, n in row.targets}
    assert [row.tokens[i] for i in nodes[0]] == [7, 1, 2]
    assert [row.tokens[i] for i in nodes[1]] == [7, 4]
    assert row.depths[nodes[1][-1]] == 3  # same position as in the unshared sequence


def test_unshared_rows_hold_one_request_each():
    requests = [req(i, [1, 2, 3, i], [i]) for i in range(4)]
    rows = pack_rows(requests, row_tokens=100, share=False)
    assert [len(r.targets) for r in rows] == [1, 1, 1, 1]
    assert all(r.parents == [-1, 0, 1, 2] for r in rows)


def test_rows_never_exceed_row_tokens_unless_one_item_is_longer():
    rng = random.Random(0)
    requests = [req(i, [rng.randrange(9) for _ in range(rng.randrange(1, 30))], [1]) for i in range(200)]
    requests.append(req(200, list(range(50)), [1]))
    rows = pack_rows(requests, row_tokens=32, share=True, cost=CostModel(0.0, 0.0, 0.0))
    assert all(len(r) <= 32 or len(group_items([q for q, _ in r.targets])) == 1 for r in rows)
    assert sorted(r.index for row in rows for r, _ in row.targets) == list(range(201))


def mc_items(num_items, *, prefix, question_tokens, choice_tokens, seed=0):
    """Multiple-choice items: ``prefix`` + a question, four choices of ``choice_tokens`` tokens."""
    rng = random.Random(seed)
    out = []
    for _ in range(num_items):
        context = list(prefix) + [rng.randrange(100, 900) for _ in range(question_tokens)]
        for _ in range(4):
            cont = [rng.randrange(100, 900) for _ in range(choice_tokens)]
            out.append(req(len(out), (context + cont)[:-1], cont))
    return out


def items_of(rows):
    return [{q.context_tokens for q, _ in row.targets} for row in rows]


@pytest.mark.parametrize("row_tokens", [8, 40, 1024])
def test_an_item_never_spans_two_rows(row_tokens):
    requests = mc_items(30, prefix=[1, 2, 3], question_tokens=12, choice_tokens=5)
    rows = pack_rows(requests, row_tokens=row_tokens, share=True, cost=CostModel(0.0, 0.0, 0.0))
    contexts = [c for row in items_of(rows) for c in row]
    assert len(contexts) == len(set(contexts)) == 30
    assert sorted(r.index for row in rows for r, _ in row.targets) == list(range(120))


def test_a_short_shared_template_does_not_pay_for_a_mask():
    """0-shot multiple choice (ARC-style): items share two template tokens, which saves far less
    than the quarter of an item a join must save; each item's choices still share its question."""
    requests = mc_items(20, prefix=[1, 2], question_tokens=25, choice_tokens=4)
    rows = pack_rows(requests, row_tokens=1024, share=True)
    assert [len(r.targets) for r in rows] == [4] * 20
    assert all(len(r) <= 2 + 25 + 4 * 3 for r in rows)  # question once, each choice's own 3 nodes
    wide = pack_rows(requests, row_tokens=1024, share=True, cost=CostModel(0.0, 0.0, 0.0))
    assert len(wide) == 1  # what an attention-blind packer would build


def test_a_long_shared_prefix_fills_rows():
    """5-shot multiple choice with one shared prefix (MMLU first_n): items share the rows."""
    prefix = list(range(1, 501))
    requests = mc_items(40, prefix=prefix, question_tokens=100, choice_tokens=1)
    rows = pack_rows(requests, row_tokens=1024, share=True)
    assert all(len(r) <= 1024 for r in rows)
    assert 5 <= len(rows) <= 10  # 5 items per row (500 + 5 x 100), not 40 rows of 600
    assert sum(len(r) for r in rows) < 0.4 * 40 * 600


def test_rolling_windows_are_items_of_their_own_and_batch_without_padding():
    """Windows start with the same prefix token; sharing it is not worth a mask."""
    rng = random.Random(3)
    lengths = [rng.randrange(200, 2000) for _ in range(40)]
    requests = []
    for i, n in enumerate(lengths):
        window = [rng.randrange(100, 900) for _ in range(n)]
        requests.append(req(i, [0] + window[:-1], window))
    assert len(group_items(requests)) == 40
    rows = pack_rows(requests, row_tokens=1024, share=True)
    assert [len(r.targets) for r in rows] == [1] * 40 and all(r.is_chain for r in rows)
    batches = pack_batches(rows, max_batch_tokens=16384)
    padded = sum(b.padded_tokens for b in batches)
    assert padded - sum(lengths) < 0.05 * padded
    greedy = pack_batches(rows, max_batch_tokens=16384, overhead_tokens=0)  # padding alone decides
    assert sum(b.padded_tokens for b in greedy) == sum(lengths)


def test_batch_cuts_trade_padding_against_forwards():
    short = [req(i, list(range(1, 1 + n)), [1]) for i, n in enumerate([90, 30, 29, 28, 27, 26])]
    rows = pack_rows(short, row_tokens=1024, share=False)
    batches = pack_batches(rows, max_batch_tokens=4096)
    assert [len(b.rows) for b in batches] == [1, 5]  # not all six padded to 90
    same = pack_rows([req(i, [1, 2, 3, i + 4], [1]) for i in range(20)], row_tokens=64, share=False)
    assert len(pack_batches(same, max_batch_tokens=4096)) == 1  # equal rows: one forward
    many = pack_batches(same, max_batch_tokens=4096, overhead_tokens=BATCH_OVERHEAD_TOKENS)
    assert len(many) == 1


def test_tiny_batches_cost_the_floor_so_short_rows_are_not_cut_apart():
    """Below BATCH_FLOOR_TOKENS a forward streams the weights whatever it holds: rows of 12 and 4
    tokens go together (48 padded, under the floor) even with no per-forward overhead, while
    without the floor padding alone would cut them apart."""
    rows = pack_rows([req(i, list(range(1, 1 + n)), [1]) for i, n in enumerate([12, 4, 4, 4])],
                     row_tokens=64, share=False)
    assert [len(b.rows) for b in pack_batches(rows, max_batch_tokens=4096, overhead_tokens=0)] == [4]
    wide = pack_rows([req(i, list(range(1, 1 + n)), [1]) for i, n in enumerate([200, 20, 20])],
                     row_tokens=512, share=False)
    assert [len(b.rows) for b in pack_batches(wide, max_batch_tokens=4096, overhead_tokens=0)] == [1, 2]

def test_cost_model_prices_masked_rows_higher():
    cost = CostModel()
    assert cost.row_cost(1000, masked=True) > cost.row_cost(1000, masked=False) > 1000


@pytest.mark.parametrize("budget", [1, 17, 64, 1000])
def test_batches_respect_the_token_budget_and_keep_every_request(budget):
    rng = random.Random(budget)
    requests = [req(i, [rng.randrange(50) for _ in range(rng.randrange(1, 20))], [2]) for i in range(100)]
    rows = pack_rows(requests, row_tokens=40, share=True)
    batches = pack_batches(rows, max_batch_tokens=budget)
    assert all(b.padded_tokens <= budget or len(b.rows) == 1 for b in batches)
    assert sorted(r.index for b in batches for r in b.requests()) == list(range(100))


def test_request_cap_limits_requests_per_batch():
    rows = pack_rows([req(i, [i, 1], [1]) for i in range(10)], row_tokens=8, share=False)
    batches = pack_batches(rows, max_batch_tokens=None, max_batch_requests=3)
    assert [b.num_requests for b in batches] == [3, 3, 3, 1]


def test_split_halves_rows_then_repacks_a_row_then_gives_up():
    rows = pack_rows([req(i, [1, 2, i], [i]) for i in range(6)], row_tokens=100, share=True)
    (row,) = rows
    assert split_batch(Batch([row, row]), row_tokens=100, share=True) == [Batch([row]), Batch([row])]
    parts = split_batch(Batch([row]), row_tokens=100, share=True)
    assert len(parts) >= 2
    assert sorted(r.index for p in parts for r in p.requests()) == list(range(6))
    single = pack_rows([req(0, [1, 2], [3])], row_tokens=100, share=True)
    assert split_batch(Batch(single), row_tokens=100, share=True) == []


def test_lowered_budget_goes_below_what_failed():
    assert lowered_budget(4096, 4096) == 3072
    assert lowered_budget(4096, 1000) == 750
    assert lowered_budget(1, 1) == 1


def test_common_prefix_tokens():
    assert common_prefix_tokens([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_tokens([], [1]) == 0


def test_generation_batches_count_prompt_plus_generated_tokens():
    requests = [GenerationRequest(i, tuple(range(10))) for i in range(10)]
    batches = pack_generation(requests, max_gen_tokens=10, max_batch_tokens=60)
    assert [len(b) for b in batches] == [3, 3, 3, 1]  # 3 rows x (10 + 10) <= 60
    capped = pack_generation(requests, max_gen_tokens=10, max_batch_tokens=None, max_batch_requests=4)
    assert [len(b) for b in capped] == [4, 4, 2]
