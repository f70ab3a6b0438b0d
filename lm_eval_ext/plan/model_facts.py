"""EDGE: the one reader of a model's config: what the planner (and ``hf_ext``'s CPU budget) needs to
know about a model, from its ``config.json`` or from a loaded model's config object, never weights.

``config.json`` is found in a local folder, the Hugging Face cache, or (``download=True``, the
adapters: they would download the model anyway) fetched alone from the hub.

Architecture numbers (layers, heads, kv heads, ...) come straight from the JSON. The parameter
count of the common decoder families (Llama, Mistral, Qwen2/3, Gemma 1/2, Mixtral, Phi-3, GPT-2,
GPT-NeoX, Falcon) is a closed formula of those numbers (:mod:`lm_eval_ext.plan.param_formulas`); every
other architecture, and any config with a shape-relevant key the formulas do not read, is built
on the meta device (accelerate's ``init_empty_weights`` and ``AutoModelForCausalLM.from_config``):
no weights are read or allocated, and the count is exact for every architecture transformers
knows. The formulas exist because importing transformers costs 5-7 s on a small CPU; the tests
check each of them against the meta build. Meta counts are cached per config (in memory and in
a small JSON file), so a warm ``lm-eval-ext plan`` never imports torch.

Weight bytes follow the dtype in use (``auto`` reads the config's ``dtype``/``torch_dtype``) and
the config's ``quantization_config``: quantized methods store the 2-D weight matrices in fewer
bits plus per-group scales, while embeddings, the LM head and norms stay in the compute dtype.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lm_eval_ext.errors import UserError
from lm_eval_ext.files import cache_root, write_json_atomic
from lm_eval_ext.plan.facts import DTYPE_BYTES, ModelFacts, Quantization, normalize_dtype, weights_bytes  # noqa: F401 (re-exported)
from lm_eval_ext.plan.param_formulas import ParamCounts, formula_counts
from lm_eval_ext.plan.param_formulas import first_set as _first

logger = logging.getLogger(__name__)

#: config keys that never change the parameter count; dropped from the cache key
_KEY_IGNORED = {"dtype", "torch_dtype", "transformers_version", "_name_or_path", "quantization_config",
                "use_cache", "architectures", "auto_map", "bos_token_id", "eos_token_id", "pad_token_id"}


def load_model_facts(pretrained: str, dtype: str = "auto", *, revision: str | None = None,
                     subfolder: str = "", trust_remote_code: bool = False, download: bool = False) -> ModelFacts:
    """Facts for a local model folder, a bare ``config.json``, a hub id already cached, or (with
    ``download``) a hub id whose ``config.json`` is fetched now."""
    config_path = resolve_config_path(pretrained, revision=revision, subfolder=subfolder, download=download)
    config = read_config(config_path)
    return facts_from_config(config, dtype, name=pretrained, trust_remote_code=trust_remote_code,
                             config_dir=config_path.parent)


def hub_offline(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the user forbade the hub (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_config_path(pretrained: str, *, revision: str | None = None, subfolder: str = "",
                        download: bool = False) -> Path:
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        candidate = path / subfolder / "config.json"
        if not candidate.is_file():
            raise UserError(f"pretrained={pretrained!r} is a folder without {candidate.name}; "
                            "point it at a model folder saved with save_pretrained")
        return candidate
    from huggingface_hub import try_to_load_from_cache

    filename = f"{subfolder}/config.json" if subfolder else "config.json"
    try:
        cached = try_to_load_from_cache(pretrained, filename, revision=revision)
    except Exception:  # an invalid repo id spelling raises from huggingface_hub's validators
        cached = None
    if isinstance(cached, str):
        return Path(cached)
    if download:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(pretrained, "config.json", revision=revision, subfolder=subfolder or None))
    raise UserError(
        f"pretrained={pretrained!r} is neither a local path nor a model in the local Hugging Face "
        f"cache; download its config first (hf download {pretrained} config.json) or pass a path"
    )


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read model config {path}: {exc}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise UserError(f"{path} is not a transformers config.json (no 'model_type' key)")
    return config


def _kv_heads(config: dict[str, Any], num_heads: int) -> int:
    explicit = _first(config, "num_key_value_heads", "n_head_kv", "num_kv_heads", "multi_query_group_num")
    if config.get("model_type") == "falcon" and not config.get("new_decoder_architecture"):
        # old Falcon (7B) ignores num_kv_heads: one shared KV head with multi_query, else MHA
        return 1 if config.get("multi_query", True) else num_heads
    if explicit is not None:
        return int(explicit)
    return 1 if config.get("multi_query") else num_heads


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Multimodal wrappers (Gemma 3, Llava...) keep the language model's numbers in text_config."""
    text = config.get("text_config")
    return {**config, **text} if isinstance(text, dict) else config


def parse_quantization(config: dict[str, Any]) -> Quantization | None:
    quant = config.get("quantization_config")
    if not quant:
        return None
    method = str(quant.get("quant_method", "bitsandbytes")).lower()
    if method == "bitsandbytes":
        if quant.get("load_in_4bit"):
            # blockwise absmax: one fp32 per 64 weights, or ~one byte per 256 when double-quantized
            return Quantization("bitsandbytes", 4, 0 if quant.get("bnb_4bit_use_double_quant") else 64)
        return Quantization("bitsandbytes", 8, 0)
    if method in {"gptq", "awq", "autoround", "gptqmodel"}:
        bits = int(_first(quant, "bits", "w_bit", default=4))
        group = int(_first(quant, "group_size", "q_group_size", default=128))
        return Quantization(method, bits, max(group, 0))
    if method in {"fp8", "fbgemm_fp8", "compressed-tensors"}:
        return Quantization(method, 8, 0)
    raise UserError(f"quantization_config quant_method={method!r} is not supported by the planner; "
                    "supported: bitsandbytes, gptq, awq, fp8")


def config_dtype(config: dict[str, Any], dtype: str) -> str:
    """``auto`` -> the checkpoint's own dtype (float32 when it names none, as transformers does)."""
    if dtype != "auto":
        return normalize_dtype(dtype)
    quant = config.get("quantization_config") or {}
    named = _first(quant, "bnb_4bit_compute_dtype") or _first(config, "dtype", "torch_dtype")
    return normalize_dtype(named or "float32")


def config_dict(config: Mapping[str, Any] | Any) -> dict[str, Any]:
    """A ``config.json`` mapping as is; a transformers config object (a loaded model's) as its dict."""
    return dict(config) if isinstance(config, Mapping) else config.to_dict()


def facts_from_config(config: Mapping[str, Any] | Any, dtype: str = "auto", *, name: str = "",
                      trust_remote_code: bool = False, config_dir: Path | None = None,
                      params: ParamCounts | None = None) -> ModelFacts:
    """Facts from a ``config.json`` mapping or a loaded model's config object; ``params`` when the
    caller counted them already (:func:`count_model_params` of a loaded model)."""
    config = config_dict(config)
    text = _text_config(config)
    num_heads = int(_first(text, "num_attention_heads", "n_head", "num_heads", "n_heads"))
    hidden = int(_first(text, "hidden_size", "n_embd", "d_model", "dim"))
    return ModelFacts(
        name=name or str(config.get("_name_or_path", config["model_type"])),
        model_type=str(config["model_type"]),
        dtype=config_dtype(config, dtype),
        params=params or count_params(config, trust_remote_code=trust_remote_code, config_dir=config_dir),
        num_layers=int(_first(text, "num_hidden_layers", "n_layer", "num_layers", "n_layers")),
        hidden_size=hidden,
        num_attention_heads=num_heads,
        num_kv_heads=_kv_heads(text, num_heads),
        head_dim=int(_first(text, "head_dim", default=hidden // num_heads)),
        vocab_size=int(_first(text, "vocab_size", "padded_vocab_size")),
        max_position_embeddings=int(_first(
            text, "max_position_embeddings", "n_positions", "max_sequence_length", "seq_length",
            "n_ctx", default=2048)),
        num_experts=int(_first(text, "num_local_experts", "num_experts", "n_routed_experts", default=1)),
        quantization=parse_quantization(config),
    )


_memory_cache: dict[str, ParamCounts] = {}
_cache_lock = threading.Lock()


def _cache_file() -> Path:
    return cache_root() / "param_counts.json"


def config_key(config: dict[str, Any]) -> str:
    kept = {k: v for k, v in sorted(config.items()) if k not in _KEY_IGNORED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:24]


def count_params(config: dict[str, Any], *, trust_remote_code: bool = False,
                 config_dir: Path | None = None) -> ParamCounts:
    """Exact parameter counts, cached by :func:`config_key`: from a closed formula for the common
    families (:mod:`lm_eval_ext.plan.param_formulas`, checked against meta builds in the tests), else
    from a meta-device build."""
    key = config_key(config)
    with _cache_lock:
        if key in _memory_cache:
            return _memory_cache[key]
        stored = _read_disk_cache().get(key)
        if stored is not None:
            _memory_cache[key] = ParamCounts(**stored)
            return _memory_cache[key]
    formula = formula_counts(config)
    if formula is not None:
        counts = formula
        with _cache_lock:
            _memory_cache[key] = counts
        return counts
    counts = _count_on_meta(config, trust_remote_code=trust_remote_code, config_dir=config_dir)
    with _cache_lock:
        _memory_cache[key] = counts
        _write_disk_cache(key, counts)
    return counts


def _read_disk_cache() -> dict[str, dict[str, Any]]:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_disk_cache(key: str, counts: ParamCounts) -> None:
    path = _cache_file()
    try:
        entries = _read_disk_cache()
        entries[key] = counts.__dict__
        write_json_atomic(path, entries, indent=0)  # concurrent ranks never read half a file
    except OSError as exc:  # a read-only home must not stop planning; it only costs speed
        logger.debug("could not write parameter-count cache %s: %s", path, exc)


def _build_transformers_config(config: dict[str, Any], trust_remote_code: bool, config_dir: Path | None):
    from transformers import AutoConfig

    if "auto_map" in config and trust_remote_code and config_dir is not None:
        return AutoConfig.from_pretrained(str(config_dir), trust_remote_code=True)
    kwargs = {k: v for k, v in config.items() if k not in {"model_type", "quantization_config", "auto_map"}}
    try:
        return AutoConfig.for_model(config["model_type"], **kwargs)
    except (ValueError, KeyError) as exc:
        hint = " (pass trust_remote_code=true for models with custom code)" if "auto_map" in config else ""
        raise UserError(f"transformers does not know model_type={config['model_type']!r}{hint}: {exc}") from None


def _count_on_meta(config: dict[str, Any], *, trust_remote_code: bool, config_dir: Path | None) -> ParamCounts:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    hf_config = _build_transformers_config(config, trust_remote_code, config_dir)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=trust_remote_code)
    model.tie_weights()  # from_config on meta leaves tied heads untied (transformers 5)
    return count_model_params(model)


def count_model_params(model) -> ParamCounts:
    """Counts of a built model (on meta, or loaded): a tied tensor counts once."""
    embedding_ids = _embedding_param_ids(model)
    total = embedding = matrix = 0
    for param in model.parameters():  # parameters() yields a tied tensor once
        total += param.numel()
        if id(param) in embedding_ids:
            embedding += param.numel()
        elif param.dim() >= 2:
            matrix += param.numel()
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    tied = outputs is not None and outputs.weight is inputs.weight
    return ParamCounts(num_params=total, num_embedding_params=embedding,
                       num_matrix_params=matrix, tied_embeddings=tied)


def _embedding_param_ids(model) -> set[int]:
    import torch

    ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    outputs = model.get_output_embeddings()
    if outputs is not None:
        ids.update(id(p) for p in outputs.parameters())
    return ids
