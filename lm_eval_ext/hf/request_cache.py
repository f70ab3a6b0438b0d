"""Request cache for ``hf_ext``: HF model identity, and weights loaded only on the first miss.

HFLM builds its model in ``__init__`` through ``self._create_model(...)`` and afterwards touches
``self.model`` only behind ``isinstance(self.model, torch.nn.Module)`` (eval, tie_weights) and in
``self.model.to(device)``. Overriding ``_create_model`` to keep its arguments and install a
:class:`DeferredModel` placeholder therefore defers the load; :meth:`_cache_prepare_compute`
replays it later and then does what HFLM's ``__init__`` would have done (eval, tie_weights, to).
A fully cached run thus loads only config and tokenizer.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import resolve_max_length

from lm_eval_ext.cache.cached_lm import CacheMode, RequestCacheMixin
from lm_eval_ext.cache.fast_path import memo_key, write_memo
from lm_eval_ext.cache.fingerprint import (
    ModelIdentity, checkpoint_identity, digest_text, hash_checkpoint, hash_tokenizer, sorted_settings,
)

logger = logging.getLogger("lm_eval_ext.cache.store")

#: rolling documents per backend call when the cache writes (a kill loses at most one chunk)
ROLLING_CHUNK_REQUESTS = 16


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
            f"'{name}' was read before that: call self._cache_prepare_compute() first"
        )


class HfRequestCacheMixin(RequestCacheMixin):
    """Mixed into HfExtLM before HFLM."""

    def _create_model(self, *args: Any, **kwargs: Any) -> None:
        self._cache_create_kwargs = kwargs
        defer = (self._cache_mode is not CacheMode.OFF and not kwargs.get("peft")
                 and not kwargs.get("parallelize"))
        # PEFT resizes embeddings to len(tokenizer) at load time, and HFLM may add a pad token
        # right after: loading later could see another length, so PEFT models load eagerly.
        # So do device_map layouts (parallelize: model_split, cpu_offload): HFLM's later steps
        # on a replayed offloaded load touched meta tensors.
        if not defer:
            HFLM._create_model(self, *args, **kwargs)
            return
        self._cache_deferred_load = (args, kwargs)
        self._model = DeferredModel(self._config)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._cache_in_hflm_init = True  # HFLM.__init__ may look at the placeholder
        super().__init__(*args, **kwargs)
        self._cache_in_hflm_init = False

    @property
    def model(self):
        """The model; after construction, reading it loads deferred weights (whoever asks for the
        model needs them). HFLM's own accesses during ``__init__`` see the placeholder, which also
        keeps accelerate's unwrap (it inspects nn.Module internals) away from it."""
        if isinstance(getattr(self, "_model", None), DeferredModel):
            if getattr(self, "_cache_in_hflm_init", False):
                return self._model
            self._cache_prepare_compute()
        return super().model

    @property
    def max_length(self) -> int:
        # HFLM reads self.model.config for this; the config alone answers it without weights
        if not self._max_length and isinstance(getattr(self, "_model", None), DeferredModel):
            return resolve_max_length(self._config, self.tokenizer, default=self._DEFAULT_MAX_LENGTH)
        return super().max_length

    @property
    def model_loaded(self) -> bool:
        return not isinstance(getattr(self, "_model", None), DeferredModel)

    def _cache_prepare_compute(self) -> None:
        placeholder = getattr(self, "_model", None)
        if not isinstance(placeholder, DeferredModel):
            return
        args, kwargs = self._cache_deferred_load
        logger.info("request cache: loading model weights for the first uncached request")
        HFLM._create_model(self, *args, **kwargs)  # replaces the placeholder in self._model
        if isinstance(self.model, torch.nn.Module):
            self.model.eval()
            self.model.tie_weights()
        if placeholder.moved_to is not None:
            try:
                self.model.to(placeholder.moved_to)
            except ValueError:  # quantized or device_map models refuse .to(), as in HFLM
                logger.debug("model could not be moved to %s", placeholder.moved_to)

    def request_cache_report(self) -> dict:
        report = super().request_cache_report()
        report["model_loaded"] = self.model_loaded
        return report

    def _write_fast_path_memo(self, model_args: dict, model_info: dict) -> None:
        """Leave what a later run needs to answer from the cache without this backend
        (:mod:`lm_eval_ext.cache.fast_path`): the fingerprint and what lm-eval reads from the model."""
        if self.world_size > 1 or self._cache_fingerprint is None or not self._cache_mode.writes:
            return
        key = memo_key(model_args)
        if key is None:
            return
        tokenizer = self.tokenizer
        write_memo(self._cache_dir, key, {
            "fingerprint": self._cache_fingerprint,
            "tokenizer": {f"{kind}_token{suffix}": getattr(tokenizer, f"{kind}_token{suffix}", None)
                          for kind in ("pad", "eos", "bos") for suffix in ("", "_id")},
            "eot_token_id": self.eot_token_id,
            "max_length": int(self.max_length),
            "model_info": {k: v for k, v in model_info.items() if k not in {"request_cache", "cost_report"}},
        })

    def _cache_compute_chunks(self, request_type: str, todo: list) -> list[list]:
        """HFLM reports rolling loglikelihoods only when its whole rolling call returns, so a kill
        would lose every rolling document of the run: hand them over in chunks, each stored when
        it returns. Not under data parallel, where rolling is collective and ranks would disagree
        on the number of calls."""
        if request_type != "loglikelihood_rolling" or self._cache_compute_is_collective(request_type):
            return [todo]
        return [todo[i : i + ROLLING_CHUNK_REQUESTS] for i in range(0, len(todo), ROLLING_CHUNK_REQUESTS)]

    def _cache_flush_every(self) -> int:
        return self.batch_size if isinstance(self.batch_size, int) else 1

    def _cache_compute_is_collective(self, request_type: str) -> bool:
        # rolling loglikelihood gathers window counts, batch_size=auto gathers probed sizes
        auto = str(self.batch_size).startswith("auto")
        return self.world_size > 1 and (request_type == "loglikelihood_rolling" or auto)

    def _cache_any_rank(self, flag: bool) -> bool:
        if self.world_size <= 1:
            return flag
        gathered = self.all_gather(torch.tensor([int(flag)], device=self.device))
        return bool(gathered.max().item())

    def _cache_model_label(self) -> str:
        return str(self.pretrained)

    def _cache_model_identity(self) -> ModelIdentity:
        kwargs = getattr(self, "_cache_create_kwargs", {})
        weights, revision = _weights_identity(kwargs, self._cache_dir)
        template = getattr(self.tokenizer, "chat_template", None)
        if isinstance(template, dict):
            template = json.dumps(template, sort_keys=True)
        return ModelIdentity(
            backend="hf",
            model_type=str(self.backend),
            weights=weights,
            revision=revision,
            dtype=_resolved_dtype(kwargs.get("dtype"), self._config),
            tokenizer=hash_tokenizer(self.tokenizer),
            chat_template=digest_text(template),
            max_length=int(self.max_length),
            adapters=_adapter_identities(kwargs, self._cache_dir),
            settings=sorted_settings(self._cache_output_settings(kwargs)),
        )

    def _cache_output_settings(self, kwargs: dict) -> dict[str, Any]:
        """Options that change outputs, beyond weights, dtype, tokenizer and max length."""
        quantization = getattr(self._config, "quantization_config", None)
        return {
            "add_bos_token": self.add_bos_token,
            "prefix_token_id": self.custom_prefix_token_id,
            "softmax_dtype": str(self.softmax_dtype),
            "mixed_precision_dtype": str(self.mixed_precision_dtype),
            "truncation": bool(self.truncation),
            "max_gen_toks": int(self.max_gen_toks),
            "think_end_token": self.think_end_token,
            "enable_thinking": self.enable_thinking,
            "chat_template_args": json.dumps(self.chat_template_args, sort_keys=True, default=str),
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


def _weights_identity(kwargs: dict, memo_dir) -> tuple[str, str | None]:
    name, revision = str(kwargs.get("pretrained")), kwargs.get("revision")
    gguf = kwargs.get("gguf_file")
    if gguf and os.path.exists(os.path.join(name, gguf)):
        return hash_checkpoint(os.path.join(name, gguf), memo_dir), None
    return checkpoint_identity(name, revision, kwargs.get("subfolder") or "", memo_dir)


def _adapter_identities(kwargs: dict, memo_dir) -> tuple[tuple[str, str], ...]:
    adapters = []
    for kind in ("peft", "delta"):
        if kwargs.get(kind):
            digest, revision = checkpoint_identity(str(kwargs[kind]), kwargs.get("revision"), "", memo_dir)
            adapters.append((kind, f"{digest}@{revision}" if revision else digest))
    return tuple(adapters)
