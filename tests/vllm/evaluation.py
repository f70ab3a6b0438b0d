"""Run the shipped tasks on an lm-eval model object and compare per-sample results."""

from __future__ import annotations

import math
from typing import Any

SUITE_TASKS = ["ext_arith_mc", "ext_copy_gen", "ext_prose_rolling"]
LOGLIKELIHOOD_TOLERANCE = 1e-4  # float32, per sample (DESIGN.md, correctness bar)
#: Documents per task: every request type and the multiple-choice grouping are covered, and the
#: vLLM tests stay within their time budget on 2 shared cores.
SUITE_LIMIT = 20


def evaluate_samples(lm: Any, task_manager: Any, limit: int | None = SUITE_LIMIT) -> dict[str, dict[int, Any]]:
    """``{task: {doc_id: resps}}`` for the shipped tasks, evaluated with ``lm``."""
    import lm_eval

    results = lm_eval.simple_evaluate(
        model=lm, tasks=SUITE_TASKS, task_manager=task_manager, log_samples=True, limit=limit,
        bootstrap_iters=0,
    )
    return {task: {s["doc_id"]: s["resps"] for s in samples} for task, samples in results["samples"].items()}


def _flatten(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _flatten(item)]
    return [value]


def differences(expected: dict, actual: dict) -> list[str]:
    """Human-readable mismatches: floats beyond the tolerance, anything else not equal."""
    problems = []
    for task, docs in expected.items():
        if set(docs) != set(actual.get(task, {})):
            problems.append(f"{task}: doc ids differ")
            continue
        for doc_id, resps in docs.items():
            for want, got in zip(_flatten(resps), _flatten(actual[task][doc_id]), strict=True):
                if isinstance(want, float) and not isinstance(want, bool):
                    if not math.isclose(want, got, rel_tol=0, abs_tol=LOGLIKELIHOOD_TOLERANCE):
                        problems.append(f"{task} doc {doc_id}: {want!r} vs {got!r}")
                elif want != got:
                    problems.append(f"{task} doc {doc_id}: {want!r} vs {got!r}")
    return problems
