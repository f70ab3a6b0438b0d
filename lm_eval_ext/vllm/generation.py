"""Generation for ``vllm_ext``: stock ``VLLM.generate_until`` request by request, stored as it arrives.

Same stop sequences, generation budget, context truncation, sampling parameters and
post-processing as stock (its own helpers do each step), and the same engine-call order (longest
context first, ``batch_size`` per call). What differs: each generation is reported as soon as the
engine returns it, under the request's own arguments (stock hands lm-eval's hook its rewritten
generation kwargs, under which no later lookup can find it). Its cost goes into the cost report:
stock's generation reads the same prefix cache in the same order, so what stock computes is what
``vllm_ext`` computes (prompt tokens not read from the cache, plus the generated ones).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from lm_eval_ext.backend.gen_kwargs import check_gen_kwargs
from lm_eval_ext.errors import UserError

from lm_eval_ext.vllm.scoring import chunked


def end_of_text(lm: Any) -> str:
    """The EOS string stock adds to every request's stop sequences."""
    eos = lm.tokenizer.decode(lm.eot_token_id)
    # stock: some tokenizers decode their EOS id to "" while eos_token names it
    if not eos and getattr(lm.tokenizer, "eos_token", None):
        eos = lm.tokenizer.eos_token
    return eos


def prepare_generation(lm: Any, encoding: list[int], gen_kwargs: dict, eos: str) -> tuple[list[int], Any, list[str]]:
    """``(prompt tokens, SamplingParams, stop sequences for post-processing)`` for one request."""
    from lm_eval.models.utils import maybe_truncate
    from lm_eval.models.vllm_causallms import SamplingParams

    if not isinstance(gen_kwargs, dict):
        raise TypeError(f"Expected `gen_kwargs` to be of type `dict` but got {type(gen_kwargs)}")
    check_gen_kwargs(gen_kwargs)
    kwargs, until, max_gen_toks = lm.modify_gen_kwargs(gen_kwargs, eos=eos, default_max_gen_toks=lm.max_gen_toks)
    tokens, max_gen_toks = maybe_truncate(
        encoding, max_gen_toks=max_gen_toks, max_model_len=lm.max_length, side=lm.truncation_side, verbose=True
    )
    # a reasoning model may emit the task's stop strings inside its thinking: only EOS stops the
    # engine, the task's stops are applied after the thinking is stripped (as stock does)
    stop = [s for s in until if s == eos] if lm.think_end_token else until
    try:
        params = SamplingParams(max_tokens=max_gen_toks, stop=stop, **kwargs)
    except TypeError as exc:  # an argument SamplingParams does not take: stock fails here with a traceback
        raise UserError(f"gen_kwargs {sorted(kwargs)} holds an argument vLLM's SamplingParams does not take ({exc}) "
                        "(from --gen_kwargs or the task's generation_kwargs); drop it") from None
    return tokens, params, until


def generate_texts(lm: Any, call: Any, on_prepared: Callable[[list], None] | None = None) -> None:
    """``on_prepared`` sees each request's ``(prompt tokens, SamplingParams, stops)`` before the engine runs."""
    from lm_eval.models.utils import postprocess_generated_text

    requests = call.requests
    contexts = [request.args[0] for request in requests]
    encodings = lm.tok_encode(contexts) if contexts else []
    eos = end_of_text(lm)
    prepared = [prepare_generation(lm, enc, request.args[1], eos) for enc, request in zip(encodings, requests)]
    if on_prepared is not None:
        on_prepared(prepared)
    order = sorted(range(len(requests)), key=lambda i: (-len(encodings[i]), contexts[i]))  # stock's Collator
    for chunk in chunked(order, lm.batch_size):
        prompts, params = [prepared[i][0] for i in chunk], [prepared[i][1] for i in chunk]
        computed: Counter[str] = Counter()
        started_s = time.perf_counter()
        for batch in lm.engine.iter_batches(prompts, params):
            for position, output in batch:
                index = chunk[position]
                call.result(index, postprocess_generated_text(output.outputs[0].text, prepared[index][2],
                                                              lm.think_end_token))
                computed[call.task_of(index)] += count_generation(lm, call, index, prompts[position], output)
            call.batch_done()
        lm.cost_report.add_phase(call.request_type.value, "generation", time.perf_counter() - started_s, computed)


def count_generation(lm: Any, call: Any, index: int, prompt: Sequence[int], output: Any) -> int:
    """One generation's cost in the report; returns the tokens it computed."""
    computed = len(prompt) - output.num_cached_tokens + output.num_generated_tokens
    lm.cost_report.count(call.task_of(index), call.request_type.value, num_requests=1, tokens_computed=computed,
                         stock_tokens=computed, cached_tokens=output.num_cached_tokens,
                         useful_tokens=len(prompt) + output.num_generated_tokens)
    return computed
