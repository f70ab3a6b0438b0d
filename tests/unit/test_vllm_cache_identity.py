"""Server-mode model identity for the request cache: what the server serves decides the key, and a
checkpoint is hashed by content only when it is certainly the one the server loaded."""

from __future__ import annotations

import logging

from lm_eval_ext.vllm.request_cache import served_weights
from lm_eval_ext.cache.fingerprint import hash_checkpoint


def _checkpoint(path, content: bytes):
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(content)
    return path


def test_a_local_server_is_identified_by_the_content_of_what_it_serves(tmp_path):
    root = _checkpoint(tmp_path / "m", b"weights-1")
    card = {"id": "m", "root": str(root), "max_model_len": 1024}
    weights, settings = served_weights(card, "http://127.0.0.1:8000/v1", tmp_path / "memo")
    assert weights == hash_checkpoint(root, None)
    assert settings["served_model_name"] == "m" and "server" not in settings  # any local port, same model
    assert served_weights(card, "http://localhost:9001/v1", None)[0] == weights
    (root / "model.safetensors").write_bytes(b"weights-2")  # same path, other weights: other key
    assert served_weights(card, "http://127.0.0.1:8000/v1", None)[0] != weights


def test_a_remote_server_is_identified_by_name_and_address_with_a_warning(tmp_path, caplog):
    root = _checkpoint(tmp_path / "m", b"weights-1")
    card = {"id": "m", "root": str(root), "max_model_len": 1024}
    with caplog.at_level(logging.WARNING, logger="lm_eval_ext.vllm.request_cache"):
        weights, settings = served_weights(card, "http://gpu7:8000/v1", None)
    # a remote /models/m need not be this machine's /models/m: its files are not hashed here
    assert weights == f"served:{root}" and settings["server"] == "gpu7:8000"
    assert "identified by its name and address only" in caplog.text
    assert served_weights(card, "http://gpu8:8000/v1", None)[1] != settings


def test_served_name_parent_and_relative_roots_count(tmp_path):
    base = {"id": "m", "root": "models/m", "max_model_len": 1024}
    weights, settings = served_weights(base, "http://127.0.0.1:8000/v1", None)
    assert weights == "served:models/m"  # relative to the server's directory, not ours
    lora = served_weights({**base, "id": "m-lora", "parent": "m"}, "http://127.0.0.1:8000/v1", None)[1]
    assert lora["served_parent"] == "m" and lora != settings
    assert served_weights({**base, "max_model_len": 512}, "http://127.0.0.1:8000/v1", None)[1] != settings
