"""Model facts from config.json only: exact parameter counts (published figures), bytes, KV sizes."""

import json
import shutil

import pytest
from tests.unit.planner_fixtures import CONFIGS, facts

from lm_eval_ext.errors import UserError
from lm_eval_ext.plan.model_facts import (
    ParamCounts, Quantization, facts_from_config, load_model_facts, parse_quantization, weights_bytes,
)

# Parameter counts as published on the models' pages / reported by transformers' num_parameters().
PUBLISHED_NUM_PARAMS = {
    "gpt2": 124_439_808,
    "llama-2-7b": 6_738_415_616,
    "llama-3-8b": 8_030_261_248,
    "llama-3-70b": 70_553_706_496,
    "mixtral-8x7b": 46_702_792_704,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-7b": 7_615_616_512,
    "falcon-7b": 6_921_720_704,
    "pythia-160m": 162_322_944,
    "gemma-2b": 2_506_172_416,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_NUM_PARAMS))
def test_param_count_matches_published(name):
    assert facts(name).num_params == PUBLISHED_NUM_PARAMS[name]


def test_dtype_auto_reads_config_and_bytes_follow_dtype():
    llama = facts("llama-2-7b")
    assert llama.dtype == "float16"  # the checkpoint's torch_dtype
    assert llama.weights_bytes == 2 * PUBLISHED_NUM_PARAMS["llama-2-7b"]
    assert facts("llama-2-7b", "float32").weights_bytes == 4 * PUBLISHED_NUM_PARAMS["llama-2-7b"]
    assert facts("gpt2").dtype == "float32"  # no dtype in the config: transformers loads float32


def test_architecture_numbers():
    llama3 = facts("llama-3-8b")
    assert (llama3.num_layers, llama3.num_attention_heads, llama3.num_kv_heads, llama3.head_dim) == (32, 32, 8, 128)
    assert llama3.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    assert (llama3.vocab_size, llama3.max_position_embeddings, llama3.tied_embeddings) == (128256, 8192, False)
    gemma = facts("gemma-2b")
    assert (gemma.head_dim, gemma.num_kv_heads, gemma.tied_embeddings) == (256, 1, True)
    assert facts("gpt2").num_attention_heads == 12 and facts("gpt2").max_position_embeddings == 1024
    assert facts("mixtral-8x7b").num_experts == 8


def test_falcon_kv_heads_follow_its_two_architectures():
    assert facts("falcon-7b").num_kv_heads == 1  # multi-query
    assert facts("falcon-40b").num_kv_heads == 8  # new_decoder_architecture with num_kv_heads


def test_gptq_bytes_count_packed_weights_and_group_scales():
    gptq = facts("llama-2-7b-gptq")
    params = gptq.params
    per_matrix_param = 0.5 + (2 + 0.5) / 128
    expected = (params.num_params - params.num_matrix_params) * 2 + int(params.num_matrix_params * per_matrix_param)
    assert gptq.quantization == Quantization("gptq", 4, 128)
    assert gptq.weights_bytes == expected
    assert gptq.weights_bytes < facts("llama-2-7b").weights_bytes / 3


def test_bnb_4bit_keeps_embeddings_in_compute_dtype():
    bnb = facts("llama-3-8b-bnb-4bit")
    assert bnb.quantization.label == "bitsandbytes-4bit"
    assert bnb.weights_bytes > bnb.params.num_embedding_params * 2  # embeddings + head are not quantized
    assert bnb.weights_bytes < facts("llama-3-8b").weights_bytes / 2


@pytest.mark.parametrize("quant, expected", [
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, Quantization("bitsandbytes", 8, 0)),
    ({"quant_method": "awq", "w_bit": 4, "q_group_size": 64}, Quantization("awq", 4, 64)),
    ({"quant_method": "fp8"}, Quantization("fp8", 8, 0)),
])
def test_parse_quantization(quant, expected):
    assert parse_quantization({"quantization_config": quant}) == expected


def test_unknown_quantization_is_refused():
    with pytest.raises(UserError, match="quant_method='hqq' is not supported"):
        parse_quantization({"quantization_config": {"quant_method": "hqq"}})


def test_weights_bytes_unquantized():
    counts = ParamCounts(num_params=1000, num_embedding_params=100, num_matrix_params=800, tied_embeddings=False)
    assert weights_bytes(counts, "bfloat16", None) == 2000


def test_bare_config_json_file(tmp_path):
    path = tmp_path / "my.json"
    shutil.copy(CONFIGS / "gpt2" / "config.json", path)
    assert load_model_facts(str(path)).num_params == PUBLISHED_NUM_PARAMS["gpt2"]


def test_hub_id_from_local_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "models--acme--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    shutil.copy(CONFIGS / "qwen2.5-0.5b" / "config.json", snapshot / "config.json")
    (tmp_path / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    loaded = load_model_facts("acme/tiny")
    assert loaded.num_params == PUBLISHED_NUM_PARAMS["qwen2.5-0.5b"] and loaded.name == "acme/tiny"


def test_missing_model_names_the_download(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match=r"hf download nobody/nothing config.json"):
        load_model_facts("nobody/nothing")


def test_folder_without_config(tmp_path):
    with pytest.raises(UserError, match="is a folder without config.json"):
        load_model_facts(str(tmp_path))


def test_not_a_transformers_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(UserError, match="no 'model_type' key"):
        load_model_facts(str(path))
    path.write_text("{not json")
    with pytest.raises(UserError, match="cannot read model config"):
        load_model_facts(str(path))


def test_unknown_model_type(tmp_path):
    with pytest.raises(UserError, match="transformers does not know model_type='martian'"):
        facts_from_config({"model_type": "martian", "num_attention_heads": 2, "hidden_size": 8,
                           "num_hidden_layers": 1, "vocab_size": 10})


def test_bad_dtype():
    with pytest.raises(UserError, match="dtype='int3' is not supported"):
        facts("gpt2", "int3")


def test_param_count_is_cached_on_disk(tmp_path, monkeypatch):
    from lm_eval_ext.plan import model_facts

    monkeypatch.setenv("LM_EVAL_EXT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(model_facts, "_memory_cache", {})
    monkeypatch.setattr(model_facts, "formula_counts", lambda config: None)  # take the meta path
    config = json.loads((CONFIGS / "pythia-160m" / "config.json").read_text())
    first = model_facts.count_params(config)
    stored = json.loads((tmp_path / "param_counts.json").read_text())
    assert stored[model_facts.config_key(config)]["num_params"] == first.num_params
    monkeypatch.setattr(model_facts, "_memory_cache", {})
    monkeypatch.setattr(model_facts, "_count_on_meta", lambda *a, **k: pytest.fail("cache was not used"))
    assert model_facts.count_params(config) == first
