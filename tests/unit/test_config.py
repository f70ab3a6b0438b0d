"""hf_ext model_args -> HfExtConfig: typed, parsed once, unknown keys rejected with a suggestion."""

from __future__ import annotations

import inspect

import pytest

from lm_eval_ext.hf.config import HfExtConfig
from lm_eval_ext.errors import ConfigError


def test_defaults_and_coercion_from_cli_strings():
    config = HfExtConfig.from_model_args(
        {"pretrained": "m", "batch_size": "8", "trust_remote_code": "true", "max_length": "512"}
    )
    assert config.batch_size == 8
    assert config.trust_remote_code is True
    assert config.max_length == 512
    assert config.device == "auto" and config.dtype == "auto"


@pytest.mark.parametrize("value", ["auto", "auto:4", 16])
def test_batch_size_forms(value):
    assert HfExtConfig.from_model_args({"pretrained": "m", "batch_size": value}).batch_size == value


def test_config_is_frozen():
    config = HfExtConfig.from_model_args({"pretrained": "m"})
    with pytest.raises(AttributeError):
        config.pretrained = "other"  # type: ignore[misc]


def test_unknown_key_names_key_suggestion_and_valid_keys():
    with pytest.raises(ConfigError) as err:
        HfExtConfig.from_model_args({"pretrained": "m", "batchsize": 4})
    message = str(err.value)
    assert "'batchsize'" in message
    assert "did you mean 'batch_size'?" in message
    assert "valid keys:" in message and "max_length" in message


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"pretrained": "m", "batch_size": "many"}, "batch_size='many' must be an integer"),
        ({"pretrained": "m", "batch_size": 0}, "batch_size=0 must be at least 1"),
        ({"pretrained": "m", "trust_remote_code": "maybe"}, "use true or false"),
        ({"pretrained": "m", "backend": "causl"}, "did you mean 'causal'?"),
        ({"batch_size": 2}, "needs 'pretrained'"),
    ],
)
def test_bad_values_say_field_value_and_fix(args, expected):
    with pytest.raises(ConfigError, match=None) as err:
        HfExtConfig.from_model_args(args)
    assert expected in str(err.value)


def test_none_strings_mean_unset():
    config = HfExtConfig.from_model_args({"pretrained": "m", "max_length": "None", "peft": "none"})
    assert config.max_length is None and config.peft is None


def test_hflm_kwargs_resolve_device_and_dtype():
    kwargs = HfExtConfig.from_model_args({"pretrained": "m"}).hflm_kwargs(device="cpu", dtype="float32")
    assert kwargs["device"] == "cpu" and kwargs["dtype"] == "float32"
    assert "attn_implementation" not in kwargs  # forwarded to from_pretrained only when set


# Fields that are ours (not HFLM parameters) and how they reach the model.
OUR_FIELDS = {"attn_implementation"}  # forwarded through HFLM's **kwargs to from_pretrained


def test_contract_hflm_still_accepts_the_names_we_pass():
    """Our first block mirrors HFLM's signature; fail loudly if lm-eval renames one."""
    from lm_eval.models.huggingface import HFLM

    accepted = set(inspect.signature(HFLM.__init__).parameters)
    passed = set(HfExtConfig.from_model_args({"pretrained": "m"}).hflm_kwargs(device="cpu", dtype="auto"))
    assert passed - accepted - OUR_FIELDS == set()


def test_contract_hflm_hooks_we_override_exist():
    from lm_eval.models.huggingface import HFLM

    for name in ("loglikelihood", "loglikelihood_rolling", "generate_until", "get_model_info"):
        assert "disable_tqdm" in inspect.signature(getattr(HFLM, name)).parameters or name == "get_model_info"
