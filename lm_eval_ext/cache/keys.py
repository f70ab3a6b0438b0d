"""PURE: request-cache keys and value codecs.

key = sha256(model fingerprint, request type, request arguments). The arguments of a
``generate_until`` request carry its generation settings (stop sequences, max_gen_toks,
temperature...); model-level settings that change outputs live in the fingerprint
(:mod:`lm_eval_ext.cache.fingerprint`). Arguments are written as canonical JSON (sorted keys, no
whitespace), so ``{"until": ..., "do_sample": ...}`` hashes the same in any insertion order.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")


class CachedValueError(ValueError):
    """A stored value does not have the shape its request type produces."""


def canonical_json(value: Any) -> str:
    """Deterministic JSON; raises TypeError for values JSON cannot carry (images, tensors)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def is_sampled(gen_kwargs: dict) -> bool:
    """lm-eval's rule (``normalize_gen_kwargs``): ``do_sample`` if given, else temperature > 0."""
    do_sample = gen_kwargs.get("do_sample")
    if do_sample is None:
        try:
            return float(gen_kwargs.get("temperature", 0.0) or 0.0) > 0.0
        except (TypeError, ValueError):
            return True  # unreadable temperature: assume sampling, i.e. do not cache
    return bool(do_sample)


#: the key of the element :func:`sample_identity` appends to a sampled request's arguments
SAMPLE_TAG = "lm_eval_ext_sample"


def sample_identity(args: tuple, *, base_seed: int, occurrence: int) -> tuple:
    """The arguments of a sampled generation that its backend draws reproducibly (hf_ext: each
    request from its own generator), with what decides the draw appended: lm-eval's seed and which
    of the call's identical requests this is (``repeats: 64`` gives 64 equal requests, 64 draws).

    >>> sample_identity(("Q:", {"do_sample": True}), base_seed=1234, occurrence=2)[-1]
    {'lm_eval_ext_sample': {'seed': 1234, 'occurrence': 2}}
    """
    return (*args, {SAMPLE_TAG: {"seed": int(base_seed), "occurrence": int(occurrence)}})


def is_cacheable(request_type: str, args: tuple) -> bool:
    """Sampled generations are cached only when their draw is pinned: an explicit integer ``seed``
    in their gen_kwargs, or a :func:`sample_identity`. Otherwise a second draw must differ, and
    replaying the first would silently bias repeats."""
    if request_type != "generate_until":
        return True
    gen_kwargs = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
    if not is_sampled(gen_kwargs):
        return True
    if len(args) > 2 and isinstance(args[-1], dict) and SAMPLE_TAG in args[-1]:
        return True
    seed = gen_kwargs.get("seed")
    return isinstance(seed, int) and not isinstance(seed, bool)


def args_json(args: tuple | list) -> str | None:
    try:
        return canonical_json(list(args))
    except (TypeError, ValueError):
        return None


def request_key(fingerprint: str, request_type: str, args: tuple | list) -> str | None:
    """Hex key, or ``None`` when the request must not be cached (sampled without seed, or
    arguments JSON cannot represent exactly)."""
    if request_type not in REQUEST_TYPES:
        raise ValueError(f"unknown request type {request_type!r}; expected one of {REQUEST_TYPES}")
    if not is_cacheable(request_type, tuple(args)):
        return None
    encoded = args_json(args)
    if encoded is None:
        return None
    payload = f"{fingerprint}\0{request_type}\0{encoded}"
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def encode_value(request_type: str, value: Any) -> str:
    """JSON text for a result; floats keep repr precision, so decoding gives the same float."""
    if request_type == "loglikelihood":
        logprob, is_greedy = value
        return json.dumps([float(logprob), bool(is_greedy)])
    if request_type == "loglikelihood_rolling":
        return json.dumps(float(value))
    return json.dumps(str(value), ensure_ascii=False)


def decode_value(request_type: str, text: str) -> Any:
    """Inverse of :func:`encode_value`, refusing anything of the wrong shape."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CachedValueError(f"stored {request_type} value is not JSON: {exc}") from None
    if request_type == "loglikelihood":
        if (
            isinstance(value, list)
            and len(value) == 2
            and _is_number(value[0])
            and isinstance(value[1], bool)
        ):
            return (float(value[0]), value[1])
    elif request_type == "loglikelihood_rolling":
        if _is_number(value):
            return float(value)
    elif isinstance(value, str):
        return value
    raise CachedValueError(f"stored {request_type} value {text[:80]!r} has the wrong shape")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
