"""PURE: ``hf_ext`` model_args -> one frozen :class:`HfExtConfig` (parsers: :mod:`lm_eval_ext.model_args`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lm_eval_ext.hf.policy.prompt_lookup import DEFAULT_DRAFT_TOKENS
from lm_eval_ext.model_args import model_path, as_str, as_bool, as_int, optional, positive_int, one_of, cache_mode, batch_size, batch_tokens, arg, parse_fields


def batch_tokens_or_off(name: str, value: Any) -> int | str | None:
    """``max_batch_tokens``: ``auto``, a positive token count, or ``off`` (stock batching)."""
    if str(value).strip().lower() in ("off", "none"):
        return None
    return batch_tokens(name, value)


@dataclass(frozen=True)
class HfExtConfig:
    """Everything ``hf_ext`` accepts in ``model_args``.

    The first block mirrors stock ``hf`` (same spellings, same meaning) and is handed to lm-eval's
    HFLM unchanged; a contract test checks those names still exist in HFLM's signature.
    """

    pretrained: str = arg(model_path, dataclasses.MISSING, "local path or hub id of the model")
    revision: str = arg(as_str, "main", "hub revision")
    subfolder: str = arg(as_str, "", "subfolder inside the repository")
    tokenizer: str | None = arg(optional(as_str), None, "tokenizer path if not the model's")
    backend: str = arg(one_of("default", "causal", "seq2seq"), "default", "model type")
    dtype: str = arg(as_str, "auto", "auto (float32 on CPU, bfloat16 on capable GPUs) or a torch dtype")
    device: str = arg(as_str, "auto", "auto, cpu, cuda, cuda:N")
    batch_size: int | str = arg(batch_size, 1, "requests per batch, or auto / auto:N")
    max_batch_size: int = arg(positive_int, 64, "upper bound for batch_size=auto")
    max_length: int | None = arg(optional(positive_int), None, "context window in tokens")
    truncation: bool = arg(as_bool, False, "truncate over-long inputs")
    logits_cache: bool = arg(as_bool, True, "share logits of one-token continuations")
    trust_remote_code: bool = arg(as_bool, False, "run code shipped with the model")
    use_fast_tokenizer: bool = arg(as_bool, True, "use the Rust tokenizer")
    add_bos_token: bool | None = arg(optional(as_bool), None, "prepend BOS")
    prefix_token_id: int | None = arg(optional(lambda n, v: as_int(n, v, 0)), None, "token for empty contexts")
    softmax_dtype: str | None = arg(optional(as_str), None, "dtype of the log-softmax")
    parallelize: bool = arg(as_bool, False, "split the model over GPUs with a device_map")
    max_memory_per_gpu: str | None = arg(optional(as_str), None, "e.g. 20GiB, with parallelize")
    max_cpu_memory: str | None = arg(optional(as_str), None, "e.g. 64GiB, with parallelize")
    offload_folder: str = arg(as_str, "./offload", "disk offload folder, with parallelize")
    peft: str | None = arg(optional(as_str), None, "PEFT adapter path or id")
    delta: str | None = arg(optional(as_str), None, "delta weights path or id")
    gguf_file: str | None = arg(optional(as_str), None, "GGUF file inside pretrained")
    think_end_token: str | None = arg(optional(as_str), None, "end-of-thinking token")
    enable_thinking: bool | None = arg(optional(as_bool), None, "chat template thinking switch")
    attn_implementation: str | None = arg(optional(as_str), None, "eager, sdpa, flash_attention_2")
    # planner (lm_eval_ext.plan.layout)
    strategy: str = arg(one_of("auto", "single", "data_parallel", "model_split", "hybrid", "cpu_offload"),
                        "auto", "parallel layout; auto plans it from the model's size and free GPU memory",
                        hflm=False)
    cache: str = arg(cache_mode, "readwrite", "request cache: off, read, write or readwrite", hflm=False)
    cache_dir: str | None = arg(
        optional(as_str), None,
        "request cache directory (default $LM_EVAL_EXT_CACHE_DIR, else ~/.cache/lm_eval_ext)", hflm=False,
    )
    # scoring engine (lm_eval_ext.hf.compute.engine)
    max_batch_tokens: int | str | None = arg(
        optional(batch_tokens_or_off), "auto",
        "padded tokens per batch of every request type: auto (sized from free memory on CPU, probed "
        "on GPUs), a number, or off (stock request-count batching by batch_size)",
        hflm=False,
    )
    share_contexts: bool = arg(as_bool, True, "score requests sharing a prefix from one pass over it",
                         hflm=False)
    prompt_lookup_num_tokens: int = arg(
        lambda n, v: as_int(n, v, 0), DEFAULT_DRAFT_TOKENS,
        "greedy generation checks up to this many prompt-lookup draft tokens per step (same output, "
        "fewer forwards); 0 turns speculation off", hflm=False,
    )

    @classmethod
    def from_model_args(cls, args: Mapping[str, Any]) -> HfExtConfig:
        return parse_fields(cls, args, what="hf_ext model_args")

    def hflm_kwargs(self, *, device: str, dtype: str) -> dict[str, Any]:
        """Keyword arguments for lm-eval's HFLM, with ``device``/``dtype`` already resolved."""
        kwargs = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("hflm", True)
        }
        kwargs.update(device=device, dtype=dtype)
        if kwargs["attn_implementation"] is None:
            del kwargs["attn_implementation"]  # HFLM forwards extra kwargs to from_pretrained
        return kwargs
