"""The continuous generation loop on the tiny model, against ``generate`` one prompt at a time
(stock at ``batch_size=1``, the reference): refills in any order, stop strings, EOS and length
limits, a few-shot prefix shared by many rows and computed once, repeats sharing their prompt,
out-of-memory in the middle of the loop (rows wait again, nothing is lost), and sampling that does
not depend on the pool."""

from __future__ import annotations

import pytest
import torch

from lm_eval_ext.hf.compute.continuous import ContinuousGenerator, RowSampler
from lm_eval_ext.hf.compute.scoring import split_model
from lm_eval_ext.hf.compute.slots import PackedForward, SlotKV
from lm_eval_ext.hf.policy.batching import GenerationRequest
from lm_eval_ext.hf.policy.gen_families import GenerationFamily, generation_families
from lm_eval_ext.hf.policy.sampling import SamplingSettings

HEAD = "Copy each list of words exactly as it is given.\n" + "Words: red blue green\nCopy: red blue green\n" * 12


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    return model, tokenizer


def make_requests(tokenizer, texts, max_new=(24,), stop=("\n\n",)):
    return [GenerationRequest(i, tuple(tokenizer(t)["input_ids"]), max_new[i % len(max_new)], stop)
            for i, t in enumerate(texts)]


def reference(model, tokenizer, request: GenerationRequest) -> str:
    """``generate`` on the prompt alone, cut at the first stop string (what lm-eval keeps)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([request.prompt_tokens]), max_new_tokens=request.max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id or 0)
    return cut(tokenizer.decode(out[0, len(request.prompt_tokens):]), request.stop)


def cut(text: str, stops) -> str:
    for stop in stops:
        text = text.split(stop)[0]
    return text


def run_loop(model, tokenizer, requests, *, max_rows, chunk=2048, families=None, samplers=lambda r: None):
    families = families or [GenerationFamily(f.prefix, tuple(requests[m].index for m in f.members))
                            for f in generation_families([r.prompt_tokens for r in requests])]
    prefix = {i: len(f.prefix) for f in families for i in f.members}
    columns = max(len(r.prompt_tokens) - prefix[r.index] + r.max_new_tokens for r in requests)
    eos = model.generation_config.eos_token_id
    loop = ContinuousGenerator(split_model(model), "cpu", eos_ids={eos} if isinstance(eos, int) else set(eos or ()),
                               decode=tokenizer.decode, max_rows=max_rows, columns=columns,
                               prefill_chunk_tokens=chunk, samplers=samplers)
    finished = []
    out = {}

    def on_finished(index, tokens):
        finished.append(index)
        out[index] = tokens

    loop.run(requests, families, on_finished=on_finished)
    return loop, out, finished


TEXTS = [HEAD + f"Words: {' '.join(['alpha', 'beta', 'gamma', 'delta'][: 1 + i % 4])} {i}\nCopy:" for i in range(7)] + \
    ["Hello there", "The quick brown fox jumps over the lazy dog. " * 3]


@pytest.mark.parametrize("max_rows, chunk", [(1, 2048), (2, 2048), (3, 64), (16, 2048)])
def test_refills_stops_and_limits_equal_generate_one_at_a_time(model_and_tokenizer, max_rows, chunk):
    model, tokenizer = model_and_tokenizer
    requests = make_requests(tokenizer, TEXTS, max_new=(24, 5, 13), stop=("\n\n", "Copy"))
    loop, out, finished = run_loop(model, tokenizer, requests, max_rows=max_rows, chunk=chunk)
    assert sorted(finished) == list(range(len(requests)))
    for request in requests:
        got = cut(tokenizer.decode(out[request.index]), request.stop)
        assert got == reference(model, tokenizer, request), request.index
        assert len(out[request.index]) <= request.max_new_tokens
    if max_rows > 1:  # rows ended at different steps and others took their slots
        assert loop.stats.mean_live_rows > 1 and finished != sorted(finished)


def test_long_prompts_prefill_in_chunks_beside_decoding_rows(model_and_tokenizer, monkeypatch):
    """Prompts of their own longer than the prefill chunk: each is prefilled over several steps
    whose forward also carries the live rows' decode tokens (one packed sequence), into the free
    slots after the live rows; a live row that finishes meanwhile frees a slot below, and the
    prompt's KV moves down when it joins. Every row still equals ``generate`` alone."""
    model, tokenizer = model_and_tokenizer
    joining, moves = [False], []
    copy_row, prefilled = SlotKV.copy_row, ContinuousGenerator._prefilled

    def spy_copy(self, source, source_row, row):
        if joining[0]:  # a move at a join, not the compaction after a row finishes
            moves.append((source_row, row))
        return copy_row(self, source, source_row, row)

    def spy_prefilled(self, *args):
        joining[0] = True
        try:
            return prefilled(self, *args)
        finally:
            joining[0] = False

    monkeypatch.setattr(SlotKV, "copy_row", spy_copy)
    monkeypatch.setattr(ContinuousGenerator, "_prefilled", spy_prefilled)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(60 + 45 * i)) + "\nCopy:" for i in range(6)]
    requests = make_requests(tokenizer, texts, max_new=(24, 9, 17), stop=("\n\n",))
    assert max(len(r.prompt_tokens) for r in requests) > 2 * 128
    loop, out, finished = run_loop(model, tokenizer, requests, max_rows=3, chunk=128)
    assert loop.stats.mixed_steps > 3 and sorted(finished) == list(range(len(requests)))
    assert moves and all(source_row > row for source_row, row in moves)  # joining prompts moved down
    for request in requests:
        assert cut(tokenizer.decode(out[request.index]), request.stop) == reference(model, tokenizer, request), \
            request.index


def test_a_few_shot_prefix_is_computed_once_and_never_copied_per_row(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    requests = make_requests(tokenizer, TEXTS[:7])
    families = generation_families([r.prompt_tokens for r in requests])
    (family,) = families
    assert len(family.prefix) > 100 and len(family.members) == 7
    loop, out, _ = run_loop(model, tokenizer, requests, max_rows=7)
    own = sum(len(r.prompt_tokens) - len(family.prefix) for r in requests)
    assert loop.stats.prefill_tokens == len(family.prefix) + own  # the prefix once, each row's own part
    assert loop.columns < len(family.prefix)  # the slots hold what each row adds, not the prefix
    for request in requests:
        assert cut(tokenizer.decode(out[request.index]), request.stop) == reference(model, tokenizer, request)


def test_repeats_share_their_prompt(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    requests = make_requests(tokenizer, [TEXTS[0]] * 5)
    loop, out, _ = run_loop(model, tokenizer, requests, max_rows=5)
    assert loop.stats.prefill_tokens == len(requests[0].prompt_tokens) - 1 + 5  # the prompt once, 5 last tokens
    assert len({tuple(tokens) for tokens in out.values()}) == 1  # greedy: the same continuation


def test_out_of_memory_mid_loop_requeues_rows_and_loses_nothing(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    requests = make_requests(tokenizer, TEXTS, max_new=(24, 5, 13), stop=("\n\n", "Copy"))
    calls = {"n": 0, "packed": 0}
    real = ContinuousGenerator._forward

    def sometimes_oom(self, ids, positions, forward):
        calls["n"] += 1
        packed = isinstance(forward, PackedForward)  # decode rows and a prefill piece in one forward
        rows = sum(part.num_rows for part in forward.parts) if packed else forward.num_rows
        if (calls["n"] in (4, 9, 15) and rows > 1) or (packed and not calls["packed"]):
            calls["packed"] += packed
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return real(self, ids, positions, forward)

    monkeypatch.setattr(ContinuousGenerator, "_forward", sometimes_oom)
    loop, out, finished = run_loop(model, tokenizer, requests, max_rows=6)
    assert loop.stats.oom_retries >= 1 and loop.stats.requeued_rows >= 1 and loop.max_rows < 6
    assert calls["packed"] >= 1  # an out-of-memory in a mixed step re-queues its prefill and its rows
    assert sorted(finished) == list(range(len(requests)))
    for request in requests:
        assert cut(tokenizer.decode(out[request.index]), request.stop) == reference(model, tokenizer, request)


def test_a_single_row_that_does_not_fit_is_not_dropped(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer

    def always(self, ids, positions, forward):
        raise torch.OutOfMemoryError("CUDA out of memory (fake)")

    monkeypatch.setattr(ContinuousGenerator, "_forward", always)
    with pytest.raises(torch.OutOfMemoryError):
        run_loop(model, tokenizer, make_requests(tokenizer, TEXTS[:1]), max_rows=4)


def sampled(requests, temperature=0.9):
    settings = SamplingSettings(temperature=temperature, top_k=50)
    return [GenerationRequest(r.index, r.prompt_tokens, r.max_new_tokens, r.stop, sampling=settings,
                              seed=1000 + r.index) for r in requests]


def test_a_sample_does_not_depend_on_the_pool(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    requests = sampled(make_requests(tokenizer, TEXTS, max_new=(16,)))

    def samplers(request):
        return RowSampler(request.sampling, request.seed)

    outputs = [run_loop(model, tokenizer, requests, max_rows=rows, samplers=samplers)[1] for rows in (1, 3, 9)]
    assert outputs[0] == outputs[1] == outputs[2]
    assert len({tuple(tokens) for tokens in outputs[0].values()}) > 1  # the samples are not one text
