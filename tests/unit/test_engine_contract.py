"""The HFLM internals the scoring engine overrides still exist with the signatures it assumes."""

from __future__ import annotations

import inspect

import pytest

HOOKS = {
    "_loglikelihood_tokens": ["self", "requests", "disable_tqdm", "override_bs"],
    "_detect_batch_size": ["self", "requests", "pos"],
    "_model_generate": ["self", "context", "max_length", "stop", "generation_kwargs"],
    "get_model_info": ["self"],
}


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hflm_hook_signature(name):
    pytest.importorskip("torch")
    from lm_eval.models.huggingface import HFLM

    assert list(inspect.signature(getattr(HFLM, name)).parameters) == HOOKS[name]


def test_stock_loops_call_the_hooks_we_rely_on():
    """Stock rolling/generation ask ``_detect_batch_size()`` for a count and chunk by it; stock
    rolling marks its windows with request key None; stock generation calls ``_model_generate``."""
    pytest.importorskip("torch")
    from lm_eval.models.huggingface import HFLM

    rolling = inspect.getsource(HFLM.loglikelihood_rolling)
    generate = inspect.getsource(HFLM.generate_until)
    assert "self._detect_batch_size()" in rolling and "(None,) + x" in rolling
    assert "self._detect_batch_size()" in generate and "self._model_generate(" in generate


def test_hf_ext_is_one_hflm_subclass_that_overrides_the_narrow_hooks():
    # was: the engine mixin sits before HFLM in the MRO; now HfExtLM owns an engine object instead
    pytest.importorskip("torch")
    from lm_eval.models.huggingface import HFLM

    from lm_eval_ext.hf.adapter import HfExtLM

    assert HfExtLM.__bases__ == (HFLM,)
    for hook in ("_loglikelihood_tokens", "_model_generate", "_detect_batch_size", "_create_model",
                 "_get_accelerate_args", "loglikelihood", "loglikelihood_rolling", "generate_until"):
        assert hook in HfExtLM.__dict__, hook
