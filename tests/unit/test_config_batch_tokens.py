"""``max_batch_tokens`` / ``share_contexts`` / ``prompt_lookup_num_tokens`` model_args: parsing, messages,
not forwarded to HFLM."""

from __future__ import annotations

import pytest

from lm_eval_ext.hf.config import HfExtConfig
from lm_eval_ext.errors import ConfigError


@pytest.mark.parametrize("raw, parsed", [("4096", 4096), (512, 512), ("auto", "auto"), ("AUTO", "auto"), ("none", None),
                                        ("off", None), ("OFF", None)])
def test_max_batch_tokens_values(raw, parsed):
    assert HfExtConfig.from_model_args({"pretrained": "m", "max_batch_tokens": raw}).max_batch_tokens == parsed


@pytest.mark.parametrize("raw", ["-3", "0", "lots", "1.5"])
def test_bad_max_batch_tokens_names_field_value_and_fix(raw):
    with pytest.raises(ConfigError) as err:
        HfExtConfig.from_model_args({"pretrained": "m", "max_batch_tokens": raw})
    message = str(err.value)
    assert f"max_batch_tokens='{raw}'" in message
    assert "positive integer" in message and "max_batch_tokens=auto" in message


def test_token_budgets_are_the_default_and_off_keeps_stock_batching():
    default = HfExtConfig.from_model_args({"pretrained": "m", "batch_size": "8"})
    assert default.max_batch_tokens == "auto"
    stock = HfExtConfig.from_model_args({"pretrained": "m", "batch_size": "8", "max_batch_tokens": "off"})
    assert stock.max_batch_tokens is None
    assert stock.hflm_kwargs(device="cpu", dtype="float32")["batch_size"] == 8  # handed to HFLM as given


def test_bad_share_contexts_is_rejected():
    with pytest.raises(ConfigError, match="share_contexts='maybe' is not a boolean"):
        HfExtConfig.from_model_args({"pretrained": "m", "share_contexts": "maybe"})


def test_engine_fields_are_not_passed_to_hflm():
    config = HfExtConfig.from_model_args({"pretrained": "m", "max_batch_tokens": "auto", "share_contexts": "false"})
    kwargs = config.hflm_kwargs(device="cpu", dtype="float32")
    assert "max_batch_tokens" not in kwargs and "share_contexts" not in kwargs
    assert config.share_contexts is False


def test_prompt_lookup_num_tokens_zero_turns_speculation_off():
    config = HfExtConfig.from_model_args({"pretrained": "m", "prompt_lookup_num_tokens": "0"})
    assert config.prompt_lookup_num_tokens == 0
    assert "prompt_lookup_num_tokens" not in config.hflm_kwargs(device="cpu", dtype="float32")
    assert HfExtConfig.from_model_args({"pretrained": "m", "prompt_lookup_num_tokens": "8"}).prompt_lookup_num_tokens == 8
    with pytest.raises(ConfigError, match="prompt_lookup_num_tokens=-1 must be at least 0"):
        HfExtConfig.from_model_args({"pretrained": "m", "prompt_lookup_num_tokens": "-1"})
