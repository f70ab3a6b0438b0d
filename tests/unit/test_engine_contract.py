"""The stock lm-eval code that ``hf/requests.py`` reproduces step by step, and the HFLM internals it
calls, still look the way it assumes (lm-eval 0.4.13). If one of these fails, stock changed: read
the stock method again and update ``hf/requests.py`` (equality tests against stock then tell).
"""

from __future__ import annotations

import inspect

import pytest

HOOKS = {
    "_model_generate": ["self", "context", "max_length", "stop", "generation_kwargs"],
    "_encode_pair": ["self", "context", "continuation"],
    "tok_batch_encode": ["self", "strings", "padding_side", "left_truncate_len", "truncation"],
    "_create_model": None,
    "_get_accelerate_args": None,
    "get_model_info": ["self"],
}


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hflm_hook_signature(name):
    pytest.importorskip("torch")
    from lm_eval.models.huggingface import HFLM

    assert hasattr(HFLM, name), name
    if HOOKS[name] is not None:
        assert list(inspect.signature(getattr(HFLM, name)).parameters) == HOOKS[name]


def test_stock_methods_do_what_hf_requests_reproduces():
    """Rolling: disjoint windows of max_length with one token of context, summed per document.
    Generation: gen_kwargs normalised, EOS added to the stops, each prompt left-truncated to
    max_length - max_gen_toks, decoded and cut by postprocess_generated_text. Loglikelihood:
    TemplateLM's encoding (empty context -> prefix token)."""
    pytest.importorskip("torch")
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.huggingface import HFLM

    rolling = inspect.getsource(HFLM.loglikelihood_rolling)
    generate = inspect.getsource(HFLM.generate_until)
    encode = inspect.getsource(TemplateLM.loglikelihood)
    for needle in ("get_rolling_token_windows(", "max_seq_len=self.max_length", "context_len=1",
                   "sum(nll[0] for _, nll in request_nlls)"):
        assert needle in rolling, needle
    for needle in ("normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)", "handle_stop_sequences(",
                   "max_ctx_len = self.max_length - max_gen_toks", "left_truncate_len=max_ctx_len",
                   "truncation=self.truncation", "postprocess_generated_text(", "self._model_generate("):
        assert needle in generate, needle
    for needle in ("[self.prefix_token_id]", "self._encode_pair(context, continuation)"):
        assert needle in encode, needle


def test_hf_ext_is_one_hflm_subclass_that_overrides_the_narrow_hooks():
    # was: the engine mixin sits before HFLM in the MRO; now HfExtLM owns an engine object instead.
    # The request methods are answered by the request front; stock's _loglikelihood_tokens,
    # _model_generate and _detect_batch_size are no longer overridden (hf/requests.py calls the
    # engine directly, stock's _model_generate only for what the engine does not handle).
    pytest.importorskip("torch")
    from lm_eval.models.huggingface import HFLM

    from lm_eval_ext.hf.adapter import HfExtLM

    assert HfExtLM.__bases__ == (HFLM,)
    for hook in ("_create_model", "_get_accelerate_args", "loglikelihood", "loglikelihood_rolling", "generate_until"):
        assert hook in HfExtLM.__dict__, hook
    for hook in ("_loglikelihood_tokens", "_model_generate", "_detect_batch_size"):
        assert hook not in HfExtLM.__dict__, hook
