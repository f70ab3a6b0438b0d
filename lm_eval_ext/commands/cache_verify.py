"""``cache verify --model-args``: recompute a random sample of one model's entries and compare.

Loglikelihoods must agree within float32 tolerance: batching changes summation order, which
moves the last digits (measured: 2.4e-4 on a rolling sum of -2044.77, i.e. 1.2e-7 relative), so the
bar is 1e-4 absolute or 1e-5 relative, whichever is looser. ``is_greedy`` flags and generations
must agree exactly.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Callable

from lm_eval_ext.cache.store import RequestStore
from lm_eval_ext.errors import UserError
from lm_eval_ext.cache.fingerprint import fingerprint
from lm_eval_ext.cache.keys import decode_value

LOGLIKELIHOOD_ABS_TOLERANCE = 1e-4
LOGLIKELIHOOD_REL_TOLERANCE = 1e-5


def model_class(backend: str) -> type:
    """The lm-eval-ext model that recomputes entries: ``hf_ext`` or ``vllm_ext``."""
    if backend == "vllm_ext":
        from lm_eval_ext.vllm.adapter import VllmExtLM

        return VllmExtLM
    from lm_eval_ext.hf.adapter import HfExtLM

    return HfExtLM


def recompute_sample(store: RequestStore, model_args: str, sample_size: int,
                     rng: random.Random, emit: Callable[[str], None], backend: str = "hf_ext") -> int:
    """Returns the number of mismatches (each one is also emitted)."""
    from lm_eval.api.instance import Instance
    from lm_eval.utils import simple_parse_args_string

    lm = model_class(backend)(**{**simple_parse_args_string(model_args), "cache": "off"})
    model_fingerprint = fingerprint(lm.request_cache.identity())
    keys = [row[0] for row in store.query("SELECT key FROM entries WHERE fingerprint = ?", (model_fingerprint,))]
    if not keys:
        raise UserError(
            f"the cache holds no entries for the model given by --model-args (fingerprint "
            f"{model_fingerprint[:16]}); 'lm-eval-ext cache stats' lists the cached models"
        )
    chosen = sorted(rng.sample(keys, min(sample_size, len(keys))))
    by_type: dict[str, list[tuple]] = defaultdict(list)
    for key in chosen:
        (row,) = store.query("SELECT request_type, args_json, value_json FROM entries WHERE key = ?", (key,))
        by_type[row[0]].append((key, tuple(json.loads(row[1])), decode_value(row[0], row[2])))
    mismatches = 0
    for request_type, rows in by_type.items():
        instances = [Instance(request_type, {}, args, index) for index, (_, args, _) in enumerate(rows)]
        computed = getattr(lm, request_type)(instances, disable_tqdm=True)
        for (key, _, stored), fresh in zip(rows, computed):
            if not values_agree(request_type, stored, fresh):
                mismatches += 1
                emit(f"MISMATCH {request_type} {key[:16]}: cached {stored!r}, recomputed {fresh!r}")
    emit(f"recompute: {len(chosen)} of {len(keys)} entries checked, {mismatches} mismatches")
    return mismatches


def values_agree(request_type: str, stored, fresh) -> bool:
    if request_type == "loglikelihood":
        return _close(stored[0], fresh[0]) and stored[1] == bool(fresh[1])
    if request_type == "loglikelihood_rolling":
        return _close(stored, fresh)
    return stored == fresh


def _close(stored: float, fresh) -> bool:
    return math.isclose(stored, float(fresh), rel_tol=LOGLIKELIHOOD_REL_TOLERANCE, abs_tol=LOGLIKELIHOOD_ABS_TOLERANCE)
