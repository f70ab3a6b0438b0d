"""PURE: a generation request's arguments (``--gen_kwargs`` merged into the task's
``generation_kwargs``) checked before a backend reads them.

lm-eval parses ``--gen_kwargs max_gen_toks=abc`` into the string ``'abc'`` and hands it on; stock
then fails deep inside with ``ValueError: invalid literal for int()``, a negative length generates
nothing (every answer scored wrong, status 0), ``do_sample=maybe`` samples (any non-empty string is
true) and a negative temperature fails inside transformers. Each of those is one line here, naming
the argument, the value, the rule and a value that works.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lm_eval_ext.errors import UserError

#: lm-eval's spellings of "how many tokens to generate" (``normalize_gen_kwargs``' aliases)
MAX_TOKEN_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
_WHERE = "(from --gen_kwargs or the task's generation_kwargs)"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _refuse(key: str, value: Any, rule: str, example: str) -> UserError:
    return UserError(f"gen_kwargs {key}={value!r} {rule} {_WHERE}; use e.g. --gen_kwargs {example}")


def check_gen_kwargs(gen_kwargs: Mapping[str, Any]) -> None:
    """Raise :class:`UserError` for the first argument no backend can use; pass anything else on."""
    for key in MAX_TOKEN_KEYS:
        value = gen_kwargs.get(key)
        if value is not None and not (_is_int(value) and value >= 1):
            raise _refuse(key, value, "must be a whole number of tokens, at least 1", f"{key}=256")
    temperature = gen_kwargs.get("temperature")
    if temperature is not None and not (_is_number(temperature) and temperature >= 0):
        raise _refuse("temperature", temperature, "must be a number >= 0 (0 is greedy)", "temperature=0.7")
    do_sample = gen_kwargs.get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise _refuse("do_sample", do_sample, "must be true or false", "do_sample=true")
    if do_sample is True and not temperature:  # stock reads a missing temperature as 0: greedy, or a failure
        raise _refuse("temperature", temperature, "cannot sample: do_sample=true needs a temperature > 0",
                      "do_sample=true,temperature=0.7 (or do_sample=false for greedy)")
    for key, low, high in (("top_p", 0.0, 1.0), ("min_p", 0.0, 1.0)):
        value = gen_kwargs.get(key)
        if value is not None and not (_is_number(value) and low < value <= high or (key == "min_p" and value == 0)):
            raise _refuse(key, value, f"must be a number in ({low:g}, {high:g}]", f"{key}=0.9")
    top_k = gen_kwargs.get("top_k")
    if top_k is not None and not (_is_int(top_k) and top_k >= 0):
        raise _refuse("top_k", top_k, "must be a whole number >= 0", "top_k=50")
    until = gen_kwargs.get("until")
    if until is not None and not (isinstance(until, str) or
                                  isinstance(until, (list, tuple)) and all(isinstance(u, str) for u in until)):
        raise _refuse("until", until, "must be a stop string or a list of them", "until=Question:")
    seed = gen_kwargs.get("seed")
    if seed is not None and not _is_int(seed):
        raise _refuse("seed", seed, "must be a whole number", "seed=1234")
