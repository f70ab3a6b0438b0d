"""The closed-form parameter counts equal a meta-device build of the same config, field by field."""

import json

import pytest
from tests.unit.planner_fixtures import CONFIGS

from lm_eval_ext.plan.model_facts import ParamCounts, _count_on_meta
from lm_eval_ext.plan.param_formulas import formula_counts

FIXTURES = sorted(p.name for p in CONFIGS.iterdir() if (p / "config.json").is_file())


def _config(name: str) -> dict:
    return json.loads((CONFIGS / name / "config.json").read_text())


@pytest.mark.parametrize("name", FIXTURES)
def test_formula_equals_meta_build(name):
    config = _config(name)
    formula = formula_counts(config)
    assert formula is not None, f"{name}: every fixture family has a formula"
    assert ParamCounts(**vars(formula)) == _count_on_meta(config, trust_remote_code=False, config_dir=None)


@pytest.mark.parametrize("variant", [
    {"attention_bias": True}, {"mlp_bias": True}, {"tie_word_embeddings": True}, {"head_dim": 64},
])
def test_llama_variants_equal_meta_build(variant):
    config = {**_config("llama-2-7b"), **variant, "num_hidden_layers": 2}
    assert ParamCounts(**vars(formula_counts(config))) == _count_on_meta(config, trust_remote_code=False,
                                                                          config_dir=None)


def test_unknown_family_or_unread_shape_key_falls_back_to_meta():
    assert formula_counts({**_config("llama-2-7b"), "model_type": "olmo2"}) is None
    assert formula_counts({**_config("llama-2-7b"), "num_shared_experts": 2}) is None
    assert formula_counts({**_config("gpt2"), "auto_map": {"AutoModel": "x.Y"}}) is None
