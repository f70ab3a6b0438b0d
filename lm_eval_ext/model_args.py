"""PURE: ``model_args`` -> frozen, typed configs, parsed once at the adapter boundary.

lm-eval hands model arguments over as a dict whose values are already partly typed (its
``--model_args`` parser turns ``"true"`` into ``True`` and ``"8"`` into ``8``; the Python API passes
whatever the caller wrote). :func:`parse_fields` coerces each value to its field's type, rejects
unknown keys with the list of valid ones and a "did you mean", and nothing downstream re-parses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any, TypeVar

from lm_eval_ext.errors import ConfigError, did_you_mean

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
    if isinstance(value, float) and value.is_integer():  # lm-eval's parser may hand "-1" over as -1.0
        value = int(value)
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(f"{name}={value!r} must be an integer") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name}={number} must be at least {minimum}; use e.g. {name}={minimum}")
    return number


def model_path(name: str, value: Any) -> str:
    """``pretrained``: a non-empty path or hub id (an empty one would load the working directory)."""
    text = as_str(name, value).strip()
    if not text:
        raise ConfigError(f"{name}= is empty; give a local model folder or a hub id, e.g. {name}=.models/smollm2-135m"
                          f" or {name}=HuggingFaceTB/SmolLM2-135M")
    return text


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


def is_auto_batch_size(value: Any) -> bool:
    """``auto`` or ``auto:N``, as parsed by :func:`batch_size` (the one place that reads the spelling)."""
    return str(value).strip().startswith("auto")


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


#: the constructor arguments lm-eval's evaluator passes to every model, with the flag that sets each
LM_EVAL_OWN_ARGS = {"batch_size": "--batch_size", "max_batch_size": "--max_batch_size", "device": "--device"}


def merge_evaluator_args(args: Mapping[str, Any], additional_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """``model_args`` plus what lm-eval adds (``batch_size``, ``max_batch_size``, ``device``), as
    ``LM.create_from_arg_string`` does, but a key given both ways is one clear error instead of
    ``TypeError: got multiple values for keyword argument``."""
    extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
    for key in args:
        if key in extra:
            flag = LM_EVAL_OWN_ARGS.get(key, f"--{key}")
            raise ConfigError(
                f"{key}={args[key]} in --model_args collides with lm-eval's own {flag} (which passes "
                f"{key}={extra[key]} to every model); give it once, as {flag} {args[key]}"
            )
    return {**args, **extra}
