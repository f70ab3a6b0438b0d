"""PURE: what a sampled request samples with, and the seed that makes its sample reproducible.

Stock ``HFLM`` samples a whole padded batch from torch's global generator: the same request gives
another sample at another batch size, another rank count, or after a resume. Here each request
draws from its own generator, seeded from lm-eval's seed, the request's arguments and which of its
identical copies it is (``repeats: 64`` hands the model 64 equal requests):

    seed = first 8 bytes of sha256(f"{base_seed}\\0{arguments as canonical JSON}\\0{occurrence}")

so its sample depends on nothing else. Settings follow ``generate``'s sampling: temperature, then
top-k, then top-p (nucleus), then min-p, each read from the request's ``gen_kwargs`` and else from
the model's generation config (transformers' default ``top_k`` is 50).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: gen_kwargs the sampler reads; any other key sends the request to stock generate
SAMPLING_KEYS = frozenset({"do_sample", "temperature", "top_k", "top_p", "min_p", "seed"})


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0 or not math.isfinite(self.temperature):
            raise ValueError(f"temperature={self.temperature} must be a positive number to sample")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")


def sampling_settings(options: Mapping[str, Any], defaults: Mapping[str, Any]) -> SamplingSettings:
    """Settings of a request whose ``options`` (after stock's normalisation) say ``do_sample``;
    ``defaults``: the model's generation config values (``top_k``, ``top_p``, ``min_p``)."""
    def pick(name: str):
        return options[name] if options.get(name) is not None else defaults.get(name)

    top_k = pick("top_k")
    top_p = pick("top_p")
    min_p = pick("min_p")
    return SamplingSettings(
        temperature=float(options.get("temperature") or 1.0),
        top_k=int(top_k) if top_k else None,
        top_p=float(top_p) if top_p is not None and float(top_p) < 1.0 else None,
        min_p=float(min_p) if min_p else None,
    )


def request_seed(base_seed: int, arguments_json: str, occurrence: int) -> int:
    """A 63-bit seed from lm-eval's seed, the request and which copy of it this is.

    >>> request_seed(1234, '["Q: 1+1?", {"do_sample": true}]', 0) == request_seed(1234, '["Q: 1+1?", {"do_sample": true}]', 0)
    True
    >>> request_seed(1234, '["x"]', 0) != request_seed(1234, '["x"]', 1)
    True
    """
    digest = hashlib.sha256(f"{base_seed}\0{arguments_json}\0{occurrence}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
