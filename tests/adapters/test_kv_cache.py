"""The growing KV cache and grouped-query attention change where states live and how
heads are read, never a value: each is compared with transformers' own cache and attention."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from lm_eval_ext.hf.compute import grouped_attention
from lm_eval_ext.hf.compute.kv_cache import SPARE_COLUMNS, GrowingLayer, RowStack, clone_cache, growing_cache, plain_cache


def states(rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, 2, length, 8, generator=generator), torch.randn(rows, 2, length, 8, generator=generator))


def test_growing_layer_holds_what_dynamic_layer_holds_through_appends_crops_and_row_selection():
    grow, plain = GrowingLayer(), DynamicLayer()
    steps = [("update", 5), ("update", 1), ("update", 3), ("crop", -2), ("update", 1), ("select", [2, 0]),
             ("update", SPARE_COLUMNS + 7), ("update", 1), ("select", [1]), ("update", 2)]
    rows = 3
    for seed, (op, arg) in enumerate(steps):
        if op == "update":
            keys, values = states(rows, arg, seed)
            got, want = grow.update(keys, values), plain.update(keys, values)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        elif op == "crop":
            grow.crop(arg), plain.crop(arg)
        else:
            index = torch.tensor(arg)
            grow.batch_select_indices(index), plain.batch_select_indices(index)
            rows = len(arg)
        assert grow.get_seq_length() == plain.get_seq_length()
        assert torch.equal(grow.keys, plain.keys) and torch.equal(grow.values, plain.values)


def test_growing_layer_appends_in_place_while_there_is_room():
    layer = GrowingLayer()
    layer.update(*states(2, 4, 0))
    buffer = layer._buffers[0]
    for seed in range(1, 20):
        layer.update(*states(2, 1, seed))
    assert layer._buffers[0] is buffer  # 4 + 19 columns fit the first reservation


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_path), dtype=torch.float32).eval()
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query heads
    return model


def test_row_stack_equals_each_rows_own_cache(tiny):
    config = tiny.config
    prompts = [list(range(5, 5 + n)) for n in (7, 12, 3)]
    singles = []
    with torch.no_grad():
        for prompt in prompts:
            cache = plain_cache(config)
            tiny.model(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True)
            singles.append(cache)
        copies = [clone_cache(c, config) for c in singles]
    stack = RowStack(config, rows=3, columns=12 + 4)
    for copy in copies:
        stack.add(copy)
    stacked = stack.finish()
    assert stacked.get_seq_length() == 12
    for row, (single, prompt) in enumerate(zip(singles, prompts, strict=True)):
        for mine, theirs in zip(stacked.layers, single.layers, strict=True):
            assert torch.equal(mine.keys[row, :, : len(prompt)], theirs.keys[0])
            assert not mine.keys[row, :, len(prompt) :].any()  # padding: zeros, masked by the caller
    with pytest.raises(ValueError, match="does not fit"):
        RowStack(config, rows=1, columns=4).add(singles[0])


def test_growing_cache_only_for_plain_layers(tiny):
    assert growing_cache(tiny.config) is not None
    sliding = type(tiny.config)(**{**tiny.config.to_dict(), "layer_types": ["sliding_attention", "full_attention"],
                                   "sliding_window": 4, "use_sliding_window": True})
    assert growing_cache(sliding) is None


def test_grouped_query_attention_reads_heads_in_place_with_identical_logits(tiny, monkeypatch):
    """A padded batch decoding over a cache: the same logits as transformers' sdpa, and the
    in-place path (enable_gqa, no repeated heads) is the one that ran."""
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 11, 12, 13]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    step = torch.tensor([[21], [22]])
    step_mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)

    def decode_logits():
        cache = growing_cache(tiny.config)
        tiny(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        return tiny(input_ids=step, attention_mask=step_mask, past_key_values=cache, use_cache=True).logits

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(k.get("enable_gqa", False)) or sdpa(*a, **k))
    with torch.no_grad():
        want = decode_logits()
        assert calls and not any(calls)
        del calls[:]
        with grouped_attention.grouped_query_attention(tiny):
            got = decode_logits()
    assert tiny.config._attn_implementation == "sdpa"  # restored
    # every layer, prefill (5 masked queries) and decode step alike, read its grouped heads in place
    assert calls == [True] * 2 * tiny.config.num_hidden_layers
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_grouped_query_attention_scores_tree_rows_after_a_prefix_in_place(tiny, monkeypatch):
    """What the scoring engine runs: rows of 24 nodes (longer than any decode step) after a cached
    8-token prefix, under the engine's additive tree mask: the same hidden states as transformers'
    sdpa with repeated heads, and every layer read its grouped heads in place."""
    from lm_eval_ext.hf.policy.batching import Batch, Row, ScoreRequest
    from lm_eval_ext.hf.compute.prefix_kv import PrefixStore
    from lm_eval_ext.hf.compute.scoring import batch_inputs, split_model

    parts = split_model(tiny)
    prefix = tuple(range(30, 38))
    context = tuple(range(40, 60))
    tree, chain = Row(), Row()  # two choices under one context; one plain request
    tree.insert(ScoreRequest(0, context + (61,), (61, 62), offset=len(prefix)), share=True)
    tree.insert(ScoreRequest(1, context + (64,), (64, 65), offset=len(prefix)), share=True)
    chain.insert(ScoreRequest(2, tuple(range(70, 87)), (86, 87), offset=len(prefix)), share=True)
    batch = Batch(rows=[tree, chain], prefix=prefix)
    assert len(tree) > 16 and len(tree.segments) == 2

    def hidden():
        cache = PrefixStore().cache_for(parts, prefix, "cpu")
        inputs = batch_inputs(batch, parts, "cpu", torch.float32)
        return parts.decoder(**inputs, past_key_values=cache, use_cache=True).last_hidden_state

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(k.get("enable_gqa", False)) or sdpa(*a, **k))
    layers = tiny.config.num_hidden_layers
    with torch.no_grad():
        want = hidden()
        # transformers: the unmasked prefix reads heads in place (is_causal), the masked rows repeat them
        assert calls == [True] * layers + [False] * layers
        del calls[:]
        with grouped_attention.grouped_query_attention(tiny):
            got = hidden()
    assert calls == [True] * 2 * layers
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
