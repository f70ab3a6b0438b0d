"""PURE: per-sample outputs, compacted from lm-eval's logged samples, and their agreement.

A sample's raw responses (``resps``) are one list per request; we keep the first return of each:
``[loglikelihood, is_greedy]`` for multiple choice, ``loglikelihood`` for rolling, the generated
text for generation (every draw, for a request with ``repeats``). Two runs agree on a sample when every loglikelihood is within ``atol`` (the
project's float32 bar, 1e-4), every ``is_greedy`` flag is equal and every generation is identical.
"""

from __future__ import annotations

import math
from typing import Any

LOGLIKELIHOOD_ATOL = 1e-4
#: rolling loglikelihoods are sums over ~1,000 tokens (magnitude ~2,000); batch composition moves
#: them by ~1e-7 relative (float summation order), more than 1e-4 absolute
LOGLIKELIHOOD_RTOL = 1e-6
MAX_EXAMPLES = 3


def _first_return(response: Any) -> Any:
    if isinstance(response, list) and len(response) > 1 and all(isinstance(r, str) for r in response):
        return list(response)  # the repeats of one generation request (``repeats: N``): every draw
    value = response[0] if isinstance(response, (list, tuple)) and response else response
    if isinstance(value, tuple):
        return list(value)
    return value


def compact_samples(samples: dict[str, list[dict]]) -> dict[str, dict[str, list]]:
    """``{task: [sample, ...]}`` from ``simple_evaluate(log_samples=True)`` -> ``{task: {doc_id: [...]}}``."""
    compact = {}
    for task, rows in samples.items():
        compact[task] = {str(row["doc_id"]): [_first_return(r) for r in row["resps"]] for row in rows}
    return compact


def _values_agree(a: Any, b: Any, atol: float) -> tuple[bool, float]:
    """(equal within tolerance, largest float difference seen)."""
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return False, math.inf
        results = [_values_agree(x, y, atol) for x, y in zip(a, b)]
        return all(ok for ok, _ in results), max((d for _, d in results), default=0.0)
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b, 0.0
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        diff = abs(float(a) - float(b))
        return diff <= max(atol, LOGLIKELIHOOD_RTOL * max(abs(float(a)), abs(float(b)))), diff
    return a == b, 0.0


def compare_samples(
    baseline: dict[str, dict[str, list]], candidate: dict[str, dict[str, list]], atol: float = LOGLIKELIHOOD_ATOL
) -> dict:
    """Agreement of ``candidate`` with ``baseline``, over the (task, doc) pairs both have.

    Returns counts, the largest loglikelihood difference, tasks or docs present on one side only,
    and up to :data:`MAX_EXAMPLES` disagreeing samples.
    """
    compared = agreed = 0
    max_abs_diff = 0.0
    examples, missing = [], []
    for task in sorted(set(baseline) | set(candidate)):
        base_docs, cand_docs = baseline.get(task, {}), candidate.get(task, {})
        if set(base_docs) != set(cand_docs):
            missing.append(f"{task}: {len(set(base_docs) ^ set(cand_docs))} docs on one side only")
        for doc_id in sorted(set(base_docs) & set(cand_docs), key=_doc_key):
            ok, diff = _values_agree(base_docs[doc_id], cand_docs[doc_id], atol)
            compared += 1
            agreed += ok
            max_abs_diff = max(max_abs_diff, diff)
            if not ok and len(examples) < MAX_EXAMPLES:
                examples.append({"task": task, "doc_id": doc_id, "baseline": base_docs[doc_id], "candidate": cand_docs[doc_id]})
    return {
        "compared_samples": compared,
        "agreeing_samples": agreed,
        "all_agree": compared > 0 and agreed == compared and not missing,
        "max_abs_loglikelihood_diff": max_abs_diff if math.isfinite(max_abs_diff) else None,
        "atol": atol,
        "missing": missing,
        "examples": examples,
    }


def _doc_key(doc_id: str) -> tuple:
    return (0, int(doc_id), "") if doc_id.isdigit() else (1, 0, doc_id)


def agreement_label(agreement: dict | None) -> str:
    """Short text for the table: ``60/60 ok``, ``58/60 DIFFER``, or ``-``."""
    if not agreement:
        return "-"
    text = f"{agreement['agreeing_samples']}/{agreement['compared_samples']}"
    return text + (" ok" if agreement["all_agree"] else " DIFFER")
