"""Helpers shared by tests: run lm-eval in-process and compare per-sample outputs."""

from __future__ import annotations

import math
from typing import Any


def evaluate(model: str, model_args: str, tasks: list[str], task_manager, **kwargs) -> dict:
    import lm_eval

    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks,
        task_manager=task_manager,
        log_samples=True,
        **kwargs,
    )


def per_sample(results: dict) -> dict[tuple[str, int], list[Any]]:
    """(task, doc_id) -> the model's raw responses for that document."""
    return {
        (task, sample["doc_id"]): sample["resps"]
        for task, samples in results["samples"].items()
        for sample in samples
    }


def assert_same_samples(expected: dict, actual: dict, atol: float, rtol: float = 1e-6) -> None:
    """Loglikelihoods within ``atol`` absolute or ``rtol`` relative, generations and is_greedy equal.

    The relative bound is for rolling loglikelihoods: a sum over ~1,000 tokens of magnitude ~2,000
    moves by ~2e-4 when the batch (and so float summation order) changes, i.e. ~1e-7 relative.
    """
    assert expected.keys() == actual.keys(), "different documents were evaluated"
    for key, want in expected.items():
        got = actual[key]
        assert len(want) == len(got), key
        for want_resp, got_resp in zip(want, got):
            _assert_same_response(want_resp[0], got_resp[0], atol, rtol, key)


def _assert_same_response(want, got, atol: float, rtol: float, key) -> None:
    if isinstance(want, str):
        assert want == got, f"{key}: generation {got!r} != stock {want!r}"
    elif isinstance(want, (list, tuple)):  # (loglikelihood, is_greedy)
        assert math.isclose(want[0], got[0], abs_tol=atol, rel_tol=rtol), f"{key}: {got[0]} != {want[0]}"
        assert bool(want[1]) == bool(got[1]), f"{key}: is_greedy differs"
    else:  # rolling loglikelihood: one float
        assert math.isclose(float(want), float(got), abs_tol=atol, rel_tol=rtol), f"{key}: {got} != {want}"


def metrics(results: dict) -> dict[str, float]:
    """``"task/metric,filter"`` -> value, for every float metric (stderrs left out)."""
    return {
        f"{task}/{name}": value
        for task, values in results["results"].items()
        for name, value in values.items()
        if isinstance(value, float) and "stderr" not in name
    }


#: the repository's root folder
REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (tests' servers and rendezvous)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
