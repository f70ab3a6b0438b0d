"""The one bytes-per-token formula: its worked examples, and both users (the planner's headroom,
hf_ext's CPU budget) reading it."""

from __future__ import annotations

from tests.unit.planner_fixtures import facts

from lm_eval_ext.plan.facts import ModelFacts
from lm_eval_ext.plan.param_formulas import ParamCounts
from lm_eval_ext.plan.token_bytes import bytes_per_token
from lm_eval_ext.plan.types import RUNTIME_RESERVE_BYTES, hf_headroom_bytes, vllm_reserve_bytes


def test_planner_worked_example_qwen2_5_14b():
    qwen = facts("qwen2.5-14b", "bfloat16")
    assert bytes_per_token(qwen, holds_kv=True) == 1_536_000  # plan/planner.py's and token_bytes.py's example
    assert hf_headroom_bytes(qwen, 4096) == RUNTIME_RESERVE_BYTES + 4096 * 1_536_000
    assert vllm_reserve_bytes(qwen, 4096) == RUNTIME_RESERVE_BYTES + 4096 * (1_536_000 - qwen.kv_bytes_per_token)


#: SmolLM2-135M's published config.json numbers, in float32
SMOLLM2 = ModelFacts(name="SmolLM2-135M", model_type="llama", dtype="float32",
                     params=ParamCounts(num_params=134_515_008, num_embedding_params=28_311_552,
                                        num_matrix_params=106_168_320, tied_embeddings=True),
                     num_layers=30, hidden_size=576, num_attention_heads=9, num_kv_heads=3, head_dim=64,
                     vocab_size=49_152, max_position_embeddings=8192)


def test_per_token_bytes_grow_with_scored_positions_and_kv_cache():
    smollm2 = SMOLLM2
    few = bytes_per_token(smollm2, scored_fraction=0.05, attention_row_tokens=512)
    every = bytes_per_token(smollm2, scored_fraction=1.0, attention_row_tokens=512)
    gen = bytes_per_token(smollm2, scored_fraction=0.05, attention_row_tokens=512, holds_kv=True)
    assert few == 67_788  # the docstring's worked example: ~66 KiB
    assert every > few + 350_000  # a full-vocabulary float32 logits + log-softmax per token
    assert gen - few == 30 * 2 * 192 * 4  # KV cache per token
