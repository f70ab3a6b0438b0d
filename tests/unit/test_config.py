"""hf_ext model_args -> HfExtConfig: typed, parsed once, unknown keys rejected with a suggestion."""

from __future__ import annotations

import inspect

import pytest

from lm_eval_ext.hf.config import HfExtConfig
from lm_eval_ext.errors import ConfigError, UserError


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


# issue 16: each model_args mistake is one line that names the field, the value and the fix

@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_pretrained_is_refused_not_read_as_the_working_directory(value):
    with pytest.raises(ConfigError) as failure:
        HfExtConfig.from_model_args({"pretrained": value})
    assert str(failure.value) == ("pretrained= is empty; give a local model folder or a hub id, e.g. "
                                  "pretrained=.models/smollm2-135m or pretrained=HuggingFaceTB/SmolLM2-135M")


def test_a_negative_prompt_lookup_is_named_with_its_rule_not_as_a_float():
    from lm_eval.utils import simple_parse_args_string

    args = simple_parse_args_string("pretrained=m,prompt_lookup_num_tokens=-1")
    with pytest.raises(ConfigError) as failure:
        HfExtConfig.from_model_args(args)
    assert str(failure.value) == "prompt_lookup_num_tokens=-1 must be at least 0; use e.g. prompt_lookup_num_tokens=0"
    assert HfExtConfig.from_model_args({"pretrained": "m", "prompt_lookup_num_tokens": 4.0}).prompt_lookup_num_tokens == 4


@pytest.mark.parametrize(("arg_string", "extra", "expected"), [
    ("pretrained=m,batch_size=8", {"batch_size": 1, "max_batch_size": None, "device": None},
     "batch_size=8 in --model_args collides with lm-eval's own --batch_size (which passes batch_size=1 to every "
     "model); give it once, as --batch_size 8"),
    ("pretrained=m,device=cpu", {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"},
     "device=cpu in --model_args collides with lm-eval's own --device (which passes device=cuda:0 to every "
     "model); give it once, as --device cpu"),
])
def test_model_args_that_collide_with_lm_evals_own_arguments(arg_string, extra, expected):
    from lm_eval.utils import simple_parse_args_string

    from lm_eval_ext.model_args import merge_evaluator_args

    with pytest.raises(ConfigError) as failure:
        merge_evaluator_args(simple_parse_args_string(arg_string), extra)
    assert str(failure.value) == expected
    assert merge_evaluator_args({"pretrained": "m"}, extra) == {"pretrained": "m", **{
        k: v for k, v in extra.items() if v is not None}}


def test_parallelize_on_cpu_is_refused_by_its_own_name():
    from lm_eval_ext.plan.hardware import describe_hardware
    from lm_eval_ext.plan.layout import plan_request

    with pytest.raises(UserError) as failure:
        plan_request(HfExtConfig.from_model_args({"pretrained": "m", "parallelize": True}), describe_hardware(""))
    assert str(failure.value) == (
        "parallelize=True splits a model over GPUs, and none is visible; drop parallelize (hf_ext plans the CPU "
        "run itself), or pass strategy=cpu_offload to spill weights to disk")
