"""``model_args`` -> frozen, typed configs, parsed once at the adapter boundary.

lm-eval hands model arguments over as a dict whose values are already partly typed (its
``--model_args`` parser turns ``"true"`` into ``True`` and ``"8"`` into ``8``; the Python API passes
whatever the caller wrote). :func:`parse_fields` coerces each value to its field's type, rejects
unknown keys with the list of valid ones and a "did you mean", and nothing downstream re-parses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lm_eval_ext.errors import ConfigError, did_you_mean
from lm_eval_ext.prompt_lookup import DEFAULT_DRAFT_TOKENS

T = TypeVar("T")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in {"none", ""})


def as_str(name: str, value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        raise ConfigError(f"{name}={value!r} must be a single string")
    return str(value)


def as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean; use true or false")


def as_int(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} must be an integer")
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(f"{name}={value!r} must be an integer") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name}={number} must be at least {minimum}")
    return number


def optional(parse: Callable[[str, Any], T]) -> Callable[[str, Any], T | None]:
    """Wrap a parser so that ``None``/``"none"`` stays ``None``."""

    def parse_optional(name: str, value: Any) -> T | None:
        return None if _is_none(value) else parse(name, value)

    return parse_optional


def positive_int(name: str, value: Any) -> int:
    return as_int(name, value, minimum=1)


def one_of(*choices: str) -> Callable[[str, Any], str]:
    def parse_choice(name: str, value: Any) -> str:
        text = str(value).strip()
        if text not in choices:
            raise ConfigError(
                f"{name}={value!r} is not valid; use one of: {', '.join(choices)}"
                + did_you_mean(text, choices)
            )
        return text

    return parse_choice


def cache_mode(name: str, value: Any) -> str:
    """off | read | write | readwrite; ``true``/``false`` (lm-eval turns them into bools) mean
    readwrite/off."""
    if isinstance(value, bool):
        return "readwrite" if value else "off"
    return one_of("off", "read", "write", "readwrite")(name, value)


def batch_size(name: str, value: Any) -> int | str:
    """``8``, ``"auto"`` or lm-eval's ``"auto:N"`` (N re-probes per run); kept in lm-eval's form."""
    text = str(value).strip()
    if text == "auto" or (text.startswith("auto:") and _is_float(text[5:])):
        return text
    return as_int(name, value, minimum=1)


def batch_tokens(name: str, value: Any) -> int | str:
    """``max_batch_tokens``: a positive number of padded tokens per batch, or ``auto``."""
    text = str(value).strip().lower()
    if text == "auto":
        return text
    try:
        return as_int(name, value, minimum=1)
    except ConfigError:
        raise ConfigError(
            f"{name}={value!r} is not a token budget; use a positive integer of padded tokens per "
            f"batch (e.g. {name}=4096) or {name}=auto to probe it"
        ) from None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def arg(parse: Callable[[str, Any], Any], default: Any = None, doc: str = "", *, hflm: bool = True) -> Any:
    """A config field: its parser, default and one-line meaning (shown in error messages).
    ``hflm=False`` marks lm-eval-ext's own fields, which are not forwarded to HFLM."""
    return field(default=default, metadata={"parse": parse, "doc": doc, "hflm": hflm})


def parse_fields(cls: type[T], args: Mapping[str, Any], *, what: str) -> T:
    """Build the frozen dataclass ``cls`` from raw ``args``; unknown keys are rejected by name."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in args if key not in fields]
    if unknown:
        key = unknown[0]
        raise ConfigError(
            f"unknown {what} key '{key}'{did_you_mean(key, fields)}; valid keys: "
            + ", ".join(sorted(fields))
        )
    values = {}
    for key, value in args.items():
        values[key] = fields[key].metadata["parse"](key, value)
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{what} needs '{missing[0]}' (e.g. {missing[0]}=PATH_OR_HUB_ID)")
    return cls(**values)


@dataclass(frozen=True)
class HfExtConfig:
    """Everything ``hf_ext`` accepts in ``model_args``.

    The first block mirrors stock ``hf`` (same spellings, same meaning) and is handed to lm-eval's
    HFLM unchanged; a contract test checks those names still exist in HFLM's signature.
    """

    pretrained: str = arg(as_str, dataclasses.MISSING, "local path or hub id of the model")
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
    # planner (lm_eval_ext.layout)
    strategy: str = arg(one_of("auto", "single", "data_parallel", "model_split", "hybrid", "cpu_offload"),
                        "auto", "parallel layout; auto plans it from the model's size and free GPU memory",
                        hflm=False)
    cache: str = arg(cache_mode, "readwrite", "request cache: off, read, write or readwrite", hflm=False)
    cache_dir: str | None = arg(
        optional(as_str), None,
        "request cache directory (default $LM_EVAL_EXT_CACHE_DIR, else ~/.cache/lm_eval_ext)", hflm=False,
    )
    # scoring engine (lm_eval_ext.engine)
    max_batch_tokens: int | str | None = arg(
        optional(batch_tokens), None, "padded tokens per batch, or auto (default: auto with batch_size=auto)",
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
