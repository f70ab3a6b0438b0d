"""lm-eval's requests in, the engine's requests out, results back: ``hf_ext``'s three computations.

Each function computes one :class:`~lm_eval_ext.backend.call.Call` of its request type on the
``HfExtLM`` ``lm``: tokenisation, truncation, rolling windows, stop sequences and post-processing
are stock ``HFLM``'s, reproduced step by step with stock's own helpers (so results equal stock at
``batch_size=1``, the reference); the forwards are the engine's (``hf/compute/engine.py``).

- ``loglikelihood``: stock ``TemplateLM.loglikelihood``'s encoding (``_encode_pair``, the prefix
  token for empty contexts), then the engine scores every pair of the call in token-budget batches.
- ``loglikelihood_rolling``: stock's disjoint windows (``max_length`` tokens, one token of context),
  all windows of the call scored together; a document's total (the sum of its windows' scores, in
  window order, as stock sums) is reported when its last window is scored.
- ``generate_until``: per request, stock's ``gen_kwargs`` normalisation, stop sequences (EOS
  added), ``max_length - max_gen_toks`` left truncation of the prompt as encoded alone; the engine
  generates every request it handles, the rest go through stock ``_model_generate`` one at a time;
  each text is decoded and cut as stock does.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lm_eval_ext.backend.call import Call
from lm_eval_ext.backend.gen_kwargs import check_gen_kwargs
from lm_eval_ext.backend.lm_requests import RollingDocuments, encode_pairs, rolling_windows
from lm_eval_ext.cache.keys import args_json
from lm_eval_ext.errors import UserError, did_you_mean
from lm_eval_ext.hf.policy.batching import GenerationRequest, score_request
from lm_eval_ext.hf.policy.sampling import request_seed, sampling_settings

logger = logging.getLogger(__name__)


def loglikelihood(lm: Any, call: Call) -> None:
    if lm.enable_thinking and call.requests:  # stock HFLM refuses it the same way
        tasks = ", ".join(call.tasks)
        raise ValueError("enable_thinking=True is not compatible with loglikelihood tasks. Please use generative "
                         f"tasks only when using `enable_thinking=True`. Triggered by task(s): {tasks}")
    pairs = encode_pairs(lm, call.requests)
    num_long = sum(len(context) + len(continuation) > lm.max_length + 1 for context, continuation in pairs)
    if num_long:
        logger.warning("%d request(s) exceed max_length=%d; truncated on the left", num_long, lm.max_length)
    requests = [score_request(i, ctx, cont, lm.max_length) for i, (ctx, cont) in enumerate(pairs)]
    lm.engine.score(call, requests, tasks=[call.task_of(i) for i in range(len(requests))], on_scored=call.result)


def loglikelihood_rolling(lm: Any, call: Call) -> None:
    documents = RollingDocuments([rolling_windows(lm, instance.args[0], lm.max_length) for instance in call.requests],
                                 on_total=call.result)
    requests = [score_request(i, ctx, cont, lm.max_length) for i, (ctx, cont) in enumerate(documents.windows)]
    documents.report_empty()
    lm.engine.score(call, requests, tasks=[call.task_of(d) for d in documents.owner], on_scored=documents.scored)


@dataclass(frozen=True)
class Generation:
    """One request's generation settings, read the way stock ``HFLM.generate_until`` reads them."""

    prompt: list[int]
    max_new_tokens: int
    until: list[str]
    options: dict
    """what stock would hand ``model.generate`` besides length and stops (``do_sample``, ``temperature``...)"""


def generation_options(lm: Any, gen_kwargs: Any, eos: str) -> tuple[dict, list[str], int]:
    """``(options, stop sequences, max_gen_toks)`` of one request's ``gen_kwargs``, as stock's
    ``generate_until`` and ``_model_generate`` read them (EOS added to the stops; temperature 0
    without ``do_sample`` means greedy)."""
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

    if not isinstance(gen_kwargs, dict):
        raise ValueError(f"Expected `kwargs` to be of type `dict` but got {type(gen_kwargs)}")
    check_gen_kwargs(gen_kwargs)
    kwargs = normalize_gen_kwargs(dict(gen_kwargs), lm.max_gen_toks)
    until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
    max_gen_toks = kwargs.pop("max_gen_toks")
    kwargs["temperature"] = kwargs.get("temperature", 0.0)
    if kwargs["temperature"] == 0.0 and kwargs.get("do_sample") is None:
        kwargs["do_sample"] = False
    if kwargs.get("do_sample") is False and kwargs["temperature"] == 0.0:
        kwargs.pop("temperature", None)
    return kwargs, until, max_gen_toks


def prepare_generation(lm: Any, context: str, gen_kwargs: Any, eos: str) -> Generation:
    kwargs, until, max_gen_toks = generation_options(lm, gen_kwargs, eos)
    max_ctx_len = lm.max_length - max_gen_toks
    if max_ctx_len <= 0:  # stock raises a ValueError with a traceback here
        raise UserError(f"gen_kwargs max_gen_toks={max_gen_toks} leaves no room for the prompt in the model's "
                        f"max_length={lm.max_length}; use max_gen_toks below {lm.max_length} (e.g. --gen_kwargs "
                        "max_gen_toks=256), or a larger max_length in --model_args if the model allows it")
    ids, _ = lm.tok_batch_encode([context], left_truncate_len=max_ctx_len, truncation=lm.truncation)
    prompt = ids[0].tolist()
    if "max_length" in kwargs:
        logger.warning("`max_length` in generation kwargs. Please use `max_gen_toks` instead.")
    max_new = kwargs.pop("max_length", len(prompt) + max_gen_toks) - len(prompt)
    _check_generate_options(kwargs)
    return Generation(prompt, max_new, until, kwargs)


@functools.cache
def _generate_option_names() -> frozenset[str]:
    """transformers' generation options, and ``seed``: a sampled request's own generator (policy/sampling.py)."""
    from transformers import GenerationConfig

    return frozenset(GenerationConfig().to_dict()) | {"seed"}


def _check_generate_options(options: dict) -> None:
    """What ``model.generate`` would refuse deep inside (``model_kwargs are not used``), in one line."""
    known = _generate_option_names()
    unknown = sorted(key for key in options if key not in known)
    if unknown:
        key = unknown[0]
        raise UserError(f"gen_kwargs {key}={options[key]!r} is not a generation argument transformers knows"
                        f"{did_you_mean(key, known)} (from --gen_kwargs or the task's generation_kwargs); drop it, "
                        "or use one of transformers' GenerationConfig fields (num_beams, top_p, repetition_penalty, ...)")


def end_of_text(lm: Any) -> str:
    return lm.tok_decode(lm.eot_token_id, skip_special_tokens=False)


def sampling_seed(lm: Any, instance: Any) -> int | None:
    """The seed a sampled request is drawn from when the engine samples it (reproducibly: its own
    generator, see ``policy/sampling.py``): the request's own ``seed``, else lm-eval's torch seed.
    None for greedy requests and for options that go to stock ``generate``."""
    import torch

    gen_kwargs = instance.args[1] if len(instance.args) > 1 else None
    if not isinstance(gen_kwargs, dict):
        return None
    options, _, _ = generation_options(lm, gen_kwargs, end_of_text(lm))
    if not options.get("do_sample") or not lm.engine.handles_generation(options):
        return None
    seed = options.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else torch.initial_seed()


def _engine_request(lm: Any, call: Call, index: int, generation: Generation) -> GenerationRequest:
    sampling, seed = None, None
    if generation.options.get("do_sample"):
        config = lm.model.generation_config
        sampling = sampling_settings(generation.options, {name: getattr(config, name, None)
                                                          for name in ("top_k", "top_p", "min_p")})
        base = call.sample_seeds[index] if call.sample_seeds else None
        base = base if base is not None else sampling_seed(lm, call.requests[index])
        seed = request_seed(base, args_json(call.requests[index].args) or "", call.occurrences[index]
                            if call.occurrences else 0)
    return GenerationRequest(index, tuple(generation.prompt), generation.max_new_tokens, tuple(generation.until),
                             sampling=sampling, seed=seed)


def generated_text(lm: Any, tokens: Sequence[int], until: list[str]) -> str:
    """Stock's decoding and post-processing of one generation (``tokens`` without the prompt)."""
    from lm_eval.models.utils import postprocess_generated_text

    tokens = list(tokens)
    if isinstance(lm.think_end_token, int):
        found = [i for i, token in enumerate(tokens) if token == lm.think_end_token]
        if found:
            tokens = tokens[found[-1] + 1:]
    text = lm.tok_decode(tokens)
    if isinstance(lm.think_end_token, int):
        text = text.lstrip()
    return postprocess_generated_text(generation=text, stop=until, think_end_token=lm.think_end_token
                                      if isinstance(lm.think_end_token, str) else None)


def generate_until(lm: Any, call: Call) -> None:
    eos = end_of_text(lm)
    prepared = [prepare_generation(lm, instance.args[0], instance.args[1], eos) for instance in call.requests]
    engine_requests, stock = [], []
    for index, generation in enumerate(prepared):
        if lm.engine.handles_generation(generation.options):
            engine_requests.append(_engine_request(lm, call, index, generation))
        else:
            stock.append(index)

    def on_generated(index: int, tokens: Sequence[int]) -> None:
        call.result(index, generated_text(lm, tokens, prepared[index].until))

    unhandled = lm.engine.generate(call, engine_requests, tasks=[call.task_of(r.index) for r in engine_requests],
                                   on_generated=on_generated)
    stock = sorted(stock + [r.index for r in unhandled])
    if stock:
        logger.info("hf_ext: %d generate_until request(s) with options the engine does not handle (%s) go "
                    "through stock generate, one at a time", len(stock), sorted(prepared[stock[0]].options))
    for index in stock:
        on_generated(index, _stock_generate(lm, prepared[index]))
        call.batch_done()


def _stock_generate(lm: Any, generation: Generation) -> list[int]:
    """Stock ``HFLM._model_generate`` on one prompt (stock at ``batch_size=1``)."""
    import torch
    from lm_eval.models.huggingface import HFLM

    context = torch.tensor([generation.prompt], dtype=torch.long, device=lm.device)
    out = HFLM._model_generate(lm, context=context, attention_mask=torch.ones_like(context),
                               stop=generation.until, max_length=len(generation.prompt) + generation.max_new_tokens,
                               **generation.options)
    return out[0, len(generation.prompt):].tolist()
