"""Request cache for ``vllm_ext``: the vLLM model identity, and an engine started on the first miss.

In process (one engine, or data-parallel replicas) the identity is the checkpoint's content hash
plus what vLLM itself resolves from the config without weights (dtype, context window), so it is
known before any engine starts and a fully cached run starts none. Tensor and data parallel sizes
stay out of it (see :data:`lm_eval_ext.cache.fingerprint.IGNORED_FIELDS`).

In server mode the identity comes from what the server says it serves (``/v1/models``: name, root
path, parent, context window). The weights are hashed by content only when the server runs on
this machine (loopback address) and its root is an absolute path here: a remote server's
``/models/x`` need not be this machine's ``/models/x``. Otherwise the weights are known by the
served root and the server's address only, and a warning says so. The server does not report its
dtype: ``dtype=`` in model_args declares it for the key, and server-mode keys never equal
in-process keys.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any
from urllib.parse import urlsplit

from lm_eval_ext.cache.cached_lm import RequestCacheMixin
from lm_eval_ext.cache.fingerprint import (
    ModelIdentity, checkpoint_identity, digest_text, hash_checkpoint, hash_tokenizer, sorted_settings,
)

logger = logging.getLogger(__name__)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
#: Results per write transaction at most; engines also flush whenever a step or response lands.
FLUSH_EVERY = 256


def served_weights(card: dict, base_url: str, memo_dir: Any, *, save_memo: bool = True) -> tuple[str, dict[str, Any]]:
    """``(weights digest, settings)`` for the model a server's ``/v1/models`` entry describes.

    Example: ``{"id": "m", "root": "/models/m"}`` from ``http://127.0.0.1:8000/v1`` with
    ``/models/m`` present here -> its content hash; from ``http://gpu7:8000/v1`` ->
    ``"served:/models/m"``, with ``gpu7:8000`` in the settings.
    """
    root = str(card.get("root") or card["id"])
    settings: dict[str, Any] = {
        "served_model_name": card["id"], "served_root": root, "served_parent": card.get("parent"),
        "served_max_model_len": card.get("max_model_len"),
    }
    host = urlsplit(base_url).hostname or ""
    if host in LOOPBACK_HOSTS and os.path.isabs(root) and os.path.exists(root):
        return hash_checkpoint(root, memo_dir, save_memo=save_memo), settings
    settings["server"] = urlsplit(base_url).netloc
    logger.warning(
        "request cache: the server's model %s is identified by its name and address only (its files are "
        "not readable here); if that server starts serving other weights under this name, pass "
        "cache=off or another cache_dir", root,
    )
    return f"served:{root}", settings


class VllmRequestCacheMixin(RequestCacheMixin):
    """Mixed into VllmExtLM before the engine-owning base (see ``adapters/vllm.py``)."""

    def _cache_prepare_compute(self) -> None:
        self.engine  # noqa: B018  (starts a deferred engine)

    def _cache_flush_every(self) -> int:
        return FLUSH_EVERY

    def _cache_model_label(self) -> str:
        if self.ext_config.is_server_mode:
            return f"{self.engine.model} @ {self.ext_config.base_url}"
        return self.ext_config.pretrained

    def _cache_model_identity(self) -> ModelIdentity:
        config = self.ext_config
        settings = self._cache_output_settings()
        if config.is_server_mode:
            weights, served = served_weights(self.engine.model_card, config.base_url, self._cache_dir,
                                           save_memo=self._cache_mode.writes)
            revision, dtype = None, f"declared:{config.dtype}"
            settings.update(served, mode="server")
        else:
            weights, revision = checkpoint_identity(config.pretrained, config.revision, "", self._cache_dir,
                                                    save_memo=self._cache_mode.writes)
            dtype = str(self._planned_model_config.dtype).replace("torch.", "")
            settings.update(quantization=config.quantization, seed=config.seed, mode="engine")
        template = getattr(self.tokenizer, "chat_template", None)
        if isinstance(template, dict):
            template = json.dumps(template, sort_keys=True)
        return ModelIdentity(
            backend="vllm", model_type="causal", weights=weights, revision=revision, dtype=dtype,
            tokenizer=hash_tokenizer(self.tokenizer), chat_template=digest_text(template),
            max_length=int(self.max_length), settings=sorted_settings(settings),
        )

    def _cache_output_settings(self) -> dict[str, Any]:
        """Options that change outputs, beyond weights, dtype, tokenizer and max length."""
        config = self.ext_config
        return {
            "add_bos_token": config.add_bos_token,
            "prefix_token_id": config.prefix_token_id,
            "max_gen_toks": config.max_gen_toks,
            "truncation_side": config.truncation_side,
            "think_end_token": config.think_end_token,
            "enable_thinking": config.enable_thinking,
            "tokenizer_mode": config.tokenizer_mode,
        }

    def request_cache_report(self) -> dict:
        report = super().request_cache_report()
        report["engine_started"] = self.engine_started
        return report
