"""The stock lm-eval and vLLM internals vllm_ext runs step by step still exist with the signatures it
assumes (a version bump that moves them fails here, not as a wrong score)."""

from __future__ import annotations

import inspect

import pytest

from tests.vllm.support import requires_vllm

pytestmark = [pytest.mark.vllm, requires_vllm]


def _parameters(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_stock_helpers_used_for_scoring_and_generation():
    from lm_eval.models.utils import maybe_truncate, postprocess_generated_text
    from lm_eval.models.vllm_causallms import VLLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    assert _parameters(VLLM._parse_logprobs) == ["tokens", "outputs", "ctxlen"]
    assert _parameters(VLLM.modify_gen_kwargs)[:3] == ["gen_kwargs", "eos", "default_max_gen_toks"]
    assert {"max_gen_toks", "max_model_len", "side"} <= set(_parameters(maybe_truncate))
    assert _parameters(postprocess_generated_text) == ["generation", "stop", "think_end_token"]
    assert {"token_list", "prefix_token", "max_seq_len", "context_len"} <= set(_parameters(get_rolling_token_windows))
    assert _parameters(make_disjoint_window) == ["pair"]
    # vllm_ext replaces these three whole: a new stock parameter would be silently ignored
    assert _parameters(VLLM.generate_until) == ["self", "requests", "disable_tqdm"]
    assert _parameters(VLLM.loglikelihood_rolling) == ["self", "requests", "disable_tqdm"]
    assert _parameters(VLLM._loglikelihood_tokens) == ["self", "requests", "disable_tqdm"]


def test_vllm_step_api_used_to_stream_finished_requests():
    from vllm import LLM
    from vllm.v1.engine.llm_engine import LLMEngine

    assert {"prompts", "sampling_params", "use_tqdm"} <= set(_parameters(LLM.enqueue))
    assert _parameters(LLMEngine.step) == ["self"] and _parameters(LLMEngine.has_unfinished_requests) == ["self"]
    assert _parameters(LLMEngine.abort_request)[:3] == ["self", "request_ids", "internal"]


def test_batch_size_inside_model_args_is_one_line_naming_lm_evals_flag():
    from lm_eval_ext.errors import ConfigError
    from lm_eval_ext.vllm.adapter import VllmExtLM

    with pytest.raises(ConfigError, match=r"^batch_size=8 in --model_args collides with lm-eval's own --batch_size"):
        VllmExtLM.create_from_arg_string("pretrained=x,batch_size=8", {"batch_size": 1, "device": None})
