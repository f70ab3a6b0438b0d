"""scoring.score_batch against a plain full-logits forward, for every packing layout."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from lm_eval_ext.hf.compute import scoring  # noqa: E402
from lm_eval_ext.hf.policy.batching import CostModel, ScoreRequest, pack_batches, pack_rows  # noqa: E402
from lm_eval_ext.hf.compute.scoring import score_batch, split_model, tree_attention_mask  # noqa: E402

#: a cost model under which every item joins the row: packed trees of unrelated items
ALWAYS_SHARE = CostModel(0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def model(tiny_model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()


def reference(model, request):
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([list(request.input_tokens)])).logits[0], -1)
    n = len(request.continuation_tokens)
    picked = logprobs[-n:].gather(1, torch.tensor(request.continuation_tokens)[:, None])
    greedy = logprobs[-n:].argmax(-1).tolist() == list(request.continuation_tokens)
    return float(picked.sum()), greedy


def make_requests(model, seed=0):
    """Six contexts x four continuations (1-4 tokens), plus one continuation that is greedy."""
    rng = random.Random(seed)
    requests = []
    for _ in range(6):
        context = [rng.randrange(2, 400) for _ in range(rng.randrange(3, 40))]
        for _ in range(4):
            cont = [rng.randrange(2, 400) for _ in range(rng.randrange(1, 5))]
            requests.append(ScoreRequest(len(requests), tuple((context + cont)[:-1]), tuple(cont)))
    context = [5, 6, 7, 8]
    with torch.no_grad():
        greedy = model(torch.tensor([context])).logits[0, -1].argmax().item()
    requests.append(ScoreRequest(len(requests), tuple(context), (greedy,)))
    return requests


@pytest.mark.parametrize("share, row_tokens, budget, cost, head_chunk", [
    (False, 512, None, None, 1024), (False, 512, 40, None, 1024), (True, 512, None, None, 1024),
    (True, 512, None, ALWAYS_SHARE, 1024), (True, 64, 128, ALWAYS_SHARE, 3), (True, 16, 16, ALWAYS_SHARE, 1024),
])
def test_every_layout_matches_the_plain_forward(model, monkeypatch, share, row_tokens, budget, cost, head_chunk):
    monkeypatch.setattr(scoring, "HEAD_CHUNK_TOKENS", head_chunk)
    requests = make_requests(model)
    parts = split_model(model)
    assert parts.split and parts.supports_tree_mask
    got = {}
    rows = pack_rows(requests, row_tokens=row_tokens, share=share, cost=cost)
    for batch in pack_batches(rows, max_batch_tokens=budget):
        got.update(score_batch(parts, batch, device="cpu", softmax_dtype=None, autocast_dtype=None))
    assert sorted(got) == list(range(len(requests)))
    for request in requests:
        want_ll, want_greedy = reference(model, request)
        assert got[request.index][0] == pytest.approx(want_ll, abs=1e-5)
        assert got[request.index][1] == want_greedy
    assert got[len(requests) - 1][1] is True  # the constructed greedy continuation


def test_models_with_logit_postprocessing_keep_their_own_forward(model, monkeypatch):
    monkeypatch.setattr(model.config, "final_logit_softcapping", 30.0, raising=False)
    parts = split_model(model)
    assert not parts.split
    requests = make_requests(model)[:4]
    (batch,) = pack_batches(pack_rows(requests, row_tokens=512, share=True), max_batch_tokens=None)
    got = score_batch(parts, batch, device="cpu", softmax_dtype=None, autocast_dtype=None)
    for request in requests:  # llama ignores the attribute, so the plain forward is the reference
        assert got[request.index][0] == pytest.approx(reference(model, request)[0], abs=1e-5)


def test_tree_mask_is_the_ancestor_relation(model):
    """The per-segment mask equals the mask read node by node from the parents."""
    rows = pack_rows(make_requests(model, seed=4), row_tokens=200, share=True, cost=ALWAYS_SHARE)
    width = max(len(r) for r in rows) + 3
    got = tree_attention_mask(rows, width, torch.float32)[:, 0] == 0
    for r, row in enumerate(rows):
        want = torch.zeros((width, width), dtype=torch.bool)
        for i in range(width):
            node = i
            while 0 <= node < len(row):
                want[i, node] = True
                node = row.parents[node]
            want[i, i] = True
        assert torch.equal(got[r], want)


@pytest.mark.parametrize("head_chunk", [1, 2, 1024])
def test_greedy_is_stocks_argmax_with_ties_and_shared_positions(monkeypatch, head_chunk):
    """Greedy is decided without an argmax at every position; it must still be stock's
    ``argmax == token``, where argmax takes the first of equal maxima, and a position read by
    several tokens (the choices of one item) gives each its own answer."""
    monkeypatch.setattr(scoring, "HEAD_CHUNK_TOKENS", head_chunk)
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0],    # tie: token 1 is greedy, token 2 is not
                           [0.5, 0.5, 0.5, 0.5],    # all equal: only token 0
                           [2.0, -1.0, 4.0, 4.0]])  # tie between 2 and 3
    slots = [0, 0, 1, 1, 2, 2, 0, 2]
    wanted = [1, 2, 0, 3, 3, 2, 0, 0]
    parts = scoring.ModelParts(model=None, decoder=None, head=None, supports_tree_mask=True)
    logprob, greedy = scoring.target_logprobs(parts, logits, False, wanted, slots, torch.float32)
    reference = torch.log_softmax(logits, dim=-1)
    assert logprob.tolist() == [reference[s, w].item() for s, w in zip(slots, wanted, strict=True)]
    assert greedy.tolist() == [reference[s].argmax().item() == w for s, w in zip(slots, wanted, strict=True)]
    assert greedy.tolist() == [True, False, True, False, False, True, False, False]
