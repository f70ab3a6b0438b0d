"""PURE: ``vllm_ext`` model_args -> one frozen :class:`VllmExtConfig`, parsed once at the adapter boundary.

Spellings follow stock lm-eval ``vllm`` (``pretrained``, ``tensor_parallel_size``, ``max_model_len``,
...); the sizes also accept ``auto`` (the default), chosen by the project planner through
:func:`lm_eval_ext.vllm.build.describe_vllm_build` (explicit values are its constraints). Server mode adds ``base_url`` and its knobs.
Pure: no vLLM, torch or environment access here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

from lm_eval_ext.errors import ConfigError
from lm_eval_ext.model_args import (  # noqa: I001
    model_path,
    arg,
    as_bool,
    as_int,
    as_str,
    batch_size,
    cache_mode,
    one_of,
    optional,
    parse_fields,
    positive_int,
)

AUTO = "auto"
Auto = Literal["auto"]


def auto_or_positive_int(name: str, value: Any) -> Union[int, Auto]:
    if str(value).strip().lower() == AUTO:
        return AUTO
    return as_int(name, value, minimum=1)


def auto_or_fraction(name: str, value: Any) -> Union[float, Auto]:
    """``auto`` or a float in (0, 1]: the share of each GPU's memory vLLM may take."""
    if str(value).strip().lower() == AUTO:
        return AUTO
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be a number in (0, 1] or auto, e.g. {name}=0.9") from None
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"{name}={fraction} must be in (0, 1], e.g. {name}=0.9")
    return fraction


def positive_float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be a positive number of seconds") from None
    if number <= 0:
        raise ConfigError(f"{name}={number} must be positive")
    return number


def http_url(name: str, value: Any) -> str:
    text = str(value).strip().rstrip("/")
    if not text.startswith(("http://", "https://")):
        raise ConfigError(f"{name}={value!r} must start with http:// or https://, e.g. {name}=http://127.0.0.1:8000/v1")
    return text


def non_negative_int(name: str, value: Any) -> int:
    return as_int(name, value, minimum=0)


@dataclass(frozen=True)
class VllmExtConfig:
    """Everything ``vllm_ext`` accepts in ``model_args``."""

    pretrained: str = arg(model_path, dataclasses.MISSING, "local path or hub id (in server mode: its tokenizer)")
    dtype: str = arg(one_of("auto", "float16", "bfloat16", "float32"), "auto",
                     "weights and activations (server mode: declares the server's, for cache keys only)")
    revision: str | None = arg(optional(as_str), None, "hub revision")
    trust_remote_code: bool = arg(as_bool, False, "run code shipped with the model")
    tokenizer: str | None = arg(optional(as_str), None, "tokenizer path if not the model's")
    tokenizer_mode: str = arg(one_of("auto", "slow"), "auto", "vLLM tokenizer mode")
    tokenizer_revision: str | None = arg(optional(as_str), None, "tokenizer hub revision")
    add_bos_token: bool | None = arg(optional(as_bool), None, "prepend BOS")
    prefix_token_id: int | None = arg(optional(non_negative_int), None, "token for empty contexts")
    tensor_parallel_size: int | Auto = arg(auto_or_positive_int, AUTO, "GPUs (CPU: core groups) per replica")
    data_parallel_size: int | Auto = arg(auto_or_positive_int, AUTO, "replicas, each a persistent process")
    pipeline_parallel_size: int | Auto = arg(auto_or_positive_int, AUTO,
                                             "pipeline stages per replica (across nodes: Ray)")
    distributed_executor_backend: str = arg(
        one_of("auto", "ray", "mp", "uni", "external_launcher"), AUTO,
        "vLLM executor; auto: ray when a replica spans nodes, else vLLM's default")
    max_model_len: int | Auto = arg(auto_or_positive_int, AUTO, "context window in tokens")
    max_length: int | None = arg(optional(positive_int), None, "stock lm-eval spelling of max_model_len")
    gpu_memory_utilization: float | Auto = arg(auto_or_fraction, AUTO, "share of GPU memory for vLLM")
    quantization: str | None = arg(optional(as_str), None, "vLLM quantization method")
    max_gen_toks: int = arg(positive_int, 256, "default generation budget in tokens")
    batch_size: int | str = arg(batch_size, AUTO, "requests per engine call; auto = all at once")
    max_batch_size: int | None = arg(optional(positive_int), None, "vLLM max_num_seqs")
    seed: int = arg(non_negative_int, 1234, "sampling seed")
    enforce_eager: bool = arg(as_bool, False, "skip graph capture (faster start, slower steps)")
    enable_prefix_caching: bool = arg(as_bool, True, "reuse KV of shared prompt prefixes")
    block_size: int | Auto = arg(auto_or_positive_int, AUTO,
                                 "KV block in tokens; auto: 32 on CPU when scoring with the prefix cache, else vLLM's")
    score_with_prefix_cache: bool | None = arg(
        optional(as_bool), None,
        "loglikelihood: compute each shared context once (vLLM's prefix cache); default on with the cache, "
        "off in server mode")
    truncation_side: str = arg(one_of("left", "right", "middle"), "left", "which end of long prompts to cut")
    device: str | None = arg(optional(as_str), None, "ignored by vLLM: pick GPUs with CUDA_VISIBLE_DEVICES")
    enable_thinking: bool | None = arg(optional(as_bool), None, "chat template thinking switch")
    think_end_token: str | None = arg(optional(as_str), None, "end-of-thinking marker")
    cache: str = arg(cache_mode, "readwrite", "request cache: off, read, write or readwrite")
    cache_dir: str | None = arg(
        optional(as_str), None, "request cache directory (default $LM_EVAL_EXT_CACHE_DIR, else ~/.cache/lm_eval_ext)"
    )
    # server mode
    base_url: str | None = arg(optional(http_url), None, "http://HOST:PORT/v1 of a running vllm serve")
    served_model_name: str | None = arg(optional(as_str), None, "model name on the server (default: its first)")
    num_concurrent: int = arg(positive_int, 4, "server mode: HTTP requests in flight at most")
    tokens_per_request: int = arg(positive_int, 4096, "server mode: prompt tokens per HTTP request")
    max_retries: int = arg(non_negative_int, 5, "server mode: retries after a timeout, connection error or 5xx")
    timeout_s: float = arg(positive_float, 300.0, "server mode: seconds to wait for one HTTP response")
    backoff_s: float = arg(positive_float, 1.0, "server mode: first retry delay; doubles per retry, with jitter")
    max_backoff_s: float = arg(positive_float, 60.0, "server mode: longest retry delay, before jitter")
    api_key_env: str = arg(as_str, "LM_EVAL_EXT_API_KEY", "env var holding the bearer token (else OPENAI_API_KEY)")

    @classmethod
    def from_model_args(cls, args: Mapping[str, Any]) -> VllmExtConfig:
        config = parse_fields(cls, args, what="vllm_ext model_args")
        config.check_combinations()
        return config

    @property
    def is_server_mode(self) -> bool:
        return self.base_url is not None

    @property
    def scores_with_prefix_cache(self) -> bool:
        """``score_with_prefix_cache``, resolved: on unless turned off or impossible."""
        if self.score_with_prefix_cache is not None:
            return self.score_with_prefix_cache
        return self.enable_prefix_caching and not self.is_server_mode

    @property
    def requested_max_model_len(self) -> int | Auto:
        """``max_model_len`` or its stock alias ``max_length`` (not both)."""
        return self.max_length if self.max_length is not None else self.max_model_len

    def check_combinations(self) -> None:
        if self.max_length is not None and self.max_model_len != AUTO:
            raise ConfigError(
                f"max_length={self.max_length} and max_model_len={self.max_model_len} both given; "
                "keep only max_model_len"
            )
        if self.enable_thinking and self.think_end_token is None:
            raise ConfigError("enable_thinking=true needs think_end_token=..., e.g. think_end_token='</think>'")
        if self.score_with_prefix_cache and not self.enable_prefix_caching:
            raise ConfigError("score_with_prefix_cache=true needs enable_prefix_caching=true; "
                              "drop one of them")
        if self.score_with_prefix_cache and self.is_server_mode:
            raise ConfigError("score_with_prefix_cache=true is not available with base_url (the completions "
                              "endpoint cannot ask vLLM to read its prefix cache for prompt logprobs); drop it")
        if self.is_server_mode:
            engine_only = {
                "block_size": self.block_size,
                "tensor_parallel_size": self.tensor_parallel_size,
                "data_parallel_size": self.data_parallel_size,
                "pipeline_parallel_size": self.pipeline_parallel_size,
                "gpu_memory_utilization": self.gpu_memory_utilization,
            }
            for name, value in engine_only.items():
                if value != AUTO:
                    raise ConfigError(
                        f"{name}={value} has no effect with base_url (the server owns its engine); "
                        f"drop it, or pass it to `vllm serve --{name.replace('_', '-')} {value}`"
                    )
