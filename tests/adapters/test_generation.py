"""Greedy generation with prompt-lookup drafts gives plain greedy decoding's tokens.

The reference is transformers' own ``generate`` (greedy, one prompt at a time: no padding), run
in the same test on the tiny model. Prompts repeat themselves so that drafts are found, some
accepted and some rejected, rows accept different numbers of tokens in one forward, and rows
leave the batch at different steps.
"""

from __future__ import annotations

import pytest
import torch

from lm_eval_ext.hf.compute import generation
from lm_eval_ext.hf.compute.generation import SOLO_PREFILL_TOKENS, greedy_generate
from lm_eval_ext.hf.compute.kv_cache import GrowingLayer
from lm_eval_ext.hf.compute.scoring import split_model

MAX_NEW = 24


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_path), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(tiny_model_path))


@pytest.fixture(scope="module")
def prompts(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    texts = ["Copy: red blue green red blue green red", "Copy: one two three one two three one two",
             "Copy: abc abc abc abc", "Question: 3 + 4 = 7. Question: 3 + 4 =", "x"]
    return [tokenizer(t)["input_ids"] for t in texts]


def reference(model, prompt, max_new, eos_ids):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new,
                         eos_token_id=sorted(eos_ids) or None, pad_token_id=0)
    tokens = out[0, len(prompt) :].tolist()
    for i, token in enumerate(tokens):  # generate pads after EOS
        if token in eos_ids:
            return tokens[: i + 1]
    return tokens


def run(model, tokenizer, prompts, draft_tokens, *, eos_ids=frozenset(), stop=()):
    return greedy_generate(split_model(model), prompts, max_new_tokens=MAX_NEW, eos_ids=set(eos_ids),
                           stop_strings=list(stop), decode=tokenizer.decode, device="cpu",
                           draft_tokens=draft_tokens)


@pytest.mark.parametrize("draft_tokens", [0, 1, 3, 8])
def test_drafted_generation_equals_plain_greedy(model_and_tokenizer, prompts, draft_tokens):
    model, tokenizer = model_and_tokenizer
    outputs, cost = run(model, tokenizer, prompts, draft_tokens)
    assert outputs == [reference(model, p, MAX_NEW, set()) for p in prompts]
    if draft_tokens:
        plain_steps = run(model, tokenizer, prompts, 0)[1].decode_steps
        assert cost.decode_steps < plain_steps  # the tiny model repeats itself: drafts are accepted


def cut(text: str, stop: list[str]) -> str:
    for term in stop:  # as lm-eval post-processes a generation
        text = text.split(term)[0]
    return text


def test_rows_leave_at_eos_and_stop_strings_with_drafts(model_and_tokenizer, prompts):
    model, tokenizer = model_and_tokenizer
    plain, _ = run(model, tokenizer, prompts, 0)
    eos = {plain[0][5]}  # a token the model does emit, so that row ends early
    stop = [tokenizer.decode(plain[1][6:8])]
    want, _ = run(model, tokenizer, prompts, 0, eos_ids=eos, stop=stop)
    got, _ = run(model, tokenizer, prompts, 5, eos_ids=eos, stop=stop)
    assert want[0] == got[0] == reference(model, prompts[0], MAX_NEW, eos)
    assert len(want[0]) <= 6 and stop[0] in tokenizer.decode(want[1])
    # a drafted step may emit tokens past the stop string; lm-eval cuts the text there
    assert [cut(tokenizer.decode(w), stop) for w in want] == [cut(tokenizer.decode(g), stop) for g in got]


@pytest.fixture(scope="module")
def long_prompts(model_and_tokenizer):
    """Prompts that differ from their first token on, longer than SOLO_PREFILL_TOKENS and of
    different lengths: each row is prefilled alone and the rows stacked into one cache."""
    _, tokenizer = model_and_tokenizer
    out = []
    for row, extra in enumerate((0, 37, 5, 90)):
        text = f"{'ABCD'[row]} list: " + " ".join(f"item {i} is {i * (row + 3) % 13}." for i in range(80))
        out.append(tokenizer(text)["input_ids"][: SOLO_PREFILL_TOKENS + 8 + extra])
    return out


def with_head(tokenizer, prompts):
    """A few-shot-like common head: computed once, copied to every row."""
    head = tokenizer("Example: one two three. " * 8)["input_ids"]
    return head, [head + p for p in prompts]


@pytest.mark.parametrize("shared_prefix", [False, True])
@pytest.mark.parametrize("draft_tokens", [0, 3])
def test_long_prompts_prefilled_row_by_row_equal_greedy(model_and_tokenizer, long_prompts, shared_prefix,
                                                        draft_tokens):
    model, tokenizer = model_and_tokenizer
    prompts = with_head(tokenizer, long_prompts)[1] if shared_prefix else long_prompts
    outputs, _ = run(model, tokenizer, prompts, draft_tokens)
    assert outputs == [reference(model, p, MAX_NEW, set()) for p in prompts]


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_long_remainders_take_the_row_by_row_prefill(model_and_tokenizer, long_prompts, shared_prefix):
    """No padding computed, and one growing cache holding every row (what the decode steps use)."""
    model, tokenizer = model_and_tokenizer
    head, prompts = with_head(tokenizer, long_prompts) if shared_prefix else ([], long_prompts)
    with torch.no_grad():
        cache, mask, positions, first, computed = generation._prefill(split_model(model), prompts, "cpu",
                                                                      room=MAX_NEW)
    assert computed == len(head) + sum(len(p) - len(head) for p in prompts)
    assert positions.tolist() == [len(p) for p in prompts] and mask.sum(dim=1).tolist() == [len(p) for p in prompts]
    assert all(isinstance(layer, GrowingLayer) for layer in cache.layers)
    assert cache.layers[0].keys.shape[0] == len(prompts) and cache.get_seq_length() == max(len(p) for p in prompts)
    want = [reference(model, p, 1, set())[0] for p in prompts]
    assert first.tolist() == want
