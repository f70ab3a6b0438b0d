"""scoring.score_batch against a plain full-logits forward, for every packing layout."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from lm_eval_ext.hf.batching import ScoreRequest, pack_batches, pack_rows  # noqa: E402
from lm_eval_ext.hf.scoring import score_batch, split_model  # noqa: E402


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


@pytest.mark.parametrize("share, row_tokens, budget", [
    (False, 512, None), (False, 512, 40), (True, 512, None), (True, 64, 128), (True, 16, 16),
])
def test_every_layout_matches_the_plain_forward(model, share, row_tokens, budget):
    requests = make_requests(model)
    parts = split_model(model)
    assert parts.split and parts.supports_tree_mask
    got = {}
    for batch in pack_batches(pack_rows(requests, row_tokens=row_tokens, share=share), max_batch_tokens=budget):
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
