"""``hf_ext``'s side of the request cache: the HF model identity, and weights loaded on the first miss.

HFLM builds its model in ``__init__`` through ``self._create_model(...)`` and afterwards touches
``self.model`` only behind ``isinstance(self.model, torch.nn.Module)`` (eval, tie_weights) and in
``self.model.to(device)``. ``HfExtLM._create_model`` therefore keeps its arguments and installs a
:class:`DeferredModel` placeholder; :func:`load_deferred_weights` replays the load later and then
does what HFLM's ``__init__`` would have done (eval, tie_weights, to). A fully cached run thus
loads only config and tokenizer.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM

from lm_eval_ext.cache.fast_path import memo_key, write_memo
from lm_eval_ext.cache.fingerprint import (
    ModelIdentity, checkpoint_identity, digest_text, hash_checkpoint, hash_tokenizer, sorted_settings,
)

logger = logging.getLogger(__name__)

class DeferredModel:
    """Stands where the model will be: knows the config, remembers ``.to(device)``; anything else
    means some code needs the weights before the first miss, which is a bug to fix there."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.moved_to: Any = None

    def to(self, device: Any) -> DeferredModel:
        self.moved_to = device
        return self

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"model weights are not loaded yet (the request cache loads them on the first miss); "
            f"'{name}' was read before that: call load_weights() first"
        )


def should_defer(kwargs: dict) -> bool:
    """PEFT resizes embeddings to len(tokenizer) at load time, and HFLM may add a pad token right
    after: loading later could see another length, so PEFT models load eagerly. So do device_map
    layouts (parallelize: model_split, cpu_offload): HFLM's later steps on a replayed offloaded
    load touched meta tensors."""
    return not kwargs.get("peft") and not kwargs.get("parallelize")


def load_deferred_weights(lm: HFLM, placeholder: DeferredModel, args: tuple, kwargs: dict) -> None:
    logger.info("request cache: loading model weights for the first uncached request")
    HFLM._create_model(lm, *args, **kwargs)  # replaces the placeholder in lm._model
    model = lm._model
    if isinstance(model, torch.nn.Module):
        model.eval()
        model.tie_weights()
    if placeholder.moved_to is not None:
        try:
            model.to(placeholder.moved_to)
        except ValueError:  # quantized or device_map models refuse .to(), as in HFLM
            logger.debug("model could not be moved to %s", placeholder.moved_to)


def write_fast_path_memo(lm: Any, model_args: dict, model_info: dict) -> None:
    """Leave what a later run needs to answer from the cache without the backend
    (:mod:`lm_eval_ext.cache.fast_path`): the fingerprint and what lm-eval reads from the model."""
    cache = lm.request_cache
    if lm.world_size > 1 or cache.fingerprint is None or not cache.mode.writes:
        return
    key = memo_key(model_args)
    if key is None:
        return
    tokenizer = lm.tokenizer
    write_memo(cache.dir, key, {
        "fingerprint": cache.fingerprint,
        "tokenizer": {f"{kind}_token{suffix}": getattr(tokenizer, f"{kind}_token{suffix}", None)
                      for kind in ("pad", "eos", "bos") for suffix in ("", "_id")},
        "eot_token_id": lm.eot_token_id,
        "max_length": int(lm.max_length),
        "model_info": {k: v for k, v in model_info.items()
                       if k not in {"request_cache", "cost_report", "estimate_vs_actual"}},
    })


def model_identity(lm: Any, create_kwargs: dict) -> ModelIdentity:
    """What decides an ``hf_ext`` model's outputs, read without its weights."""
    memo_dir = lm.request_cache.dir
    save = lm.request_cache.mode.writes  # cache=read reads the fingerprint memo but writes nothing
    weights, revision = _weights_identity(create_kwargs, memo_dir, save)
    template = getattr(lm.tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = json.dumps(template, sort_keys=True)
    return ModelIdentity(
        backend="hf",
        model_type=str(lm.backend),
        weights=weights,
        revision=revision,
        dtype=_resolved_dtype(create_kwargs.get("dtype"), lm._config),
        tokenizer=hash_tokenizer(lm.tokenizer),
        chat_template=digest_text(template),
        max_length=int(lm.max_length),
        adapters=_adapter_identities(create_kwargs, memo_dir, save),
        settings=sorted_settings(output_settings(lm, create_kwargs)),
    )


def output_settings(lm: Any, kwargs: dict) -> dict[str, Any]:
    """Options that change outputs, beyond weights, dtype, tokenizer and max length."""
    quantization = getattr(lm._config, "quantization_config", None)
    return {
        "add_bos_token": lm.add_bos_token,
        "prefix_token_id": lm.custom_prefix_token_id,
        "softmax_dtype": str(lm.softmax_dtype),
        "mixed_precision_dtype": str(lm.mixed_precision_dtype),
        "truncation": bool(lm.truncation),
        "max_gen_toks": int(lm.max_gen_toks),
        "think_end_token": lm.think_end_token,
        "enable_thinking": lm.enable_thinking,
        "chat_template_args": json.dumps(lm.chat_template_args, sort_keys=True, default=str),
        "attn_implementation": kwargs.get("attn_implementation"),
        "quantization": json.dumps(quantization, sort_keys=True, default=str) if quantization else None,
        "load_in_4bit": kwargs.get("load_in_4bit"),
        "load_in_8bit": kwargs.get("load_in_8bit"),
    }


def _resolved_dtype(requested: Any, config: Any) -> str:
    """The dtype the weights are computed in, spelled ``float32``/``bfloat16``: ``auto`` means the
    checkpoint's own dtype, and transformers' default (float32) when the config names none."""
    if requested in (None, "auto"):
        requested = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return str(requested).replace("torch.", "")


def _weights_identity(kwargs: dict, memo_dir, save_memo: bool = True) -> tuple[str, str | None]:
    name, revision = str(kwargs.get("pretrained")), kwargs.get("revision")
    gguf = kwargs.get("gguf_file")
    if gguf and os.path.exists(os.path.join(name, gguf)):
        return hash_checkpoint(os.path.join(name, gguf), memo_dir, save_memo=save_memo), None
    return checkpoint_identity(name, revision, kwargs.get("subfolder") or "", memo_dir, save_memo=save_memo)


def _adapter_identities(kwargs: dict, memo_dir, save_memo: bool = True) -> tuple[tuple[str, str], ...]:
    adapters = []
    for kind in ("peft", "delta"):
        if kwargs.get(kind):
            digest, revision = checkpoint_identity(str(kwargs[kind]), kwargs.get("revision"), "", memo_dir,
                                                   save_memo=save_memo)
            adapters.append((kind, f"{digest}@{revision}" if revision else digest))
    return tuple(adapters)
