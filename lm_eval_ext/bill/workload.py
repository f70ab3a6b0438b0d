"""EDGE (lm-eval): the requests a run would send to the model, built by lm-eval itself, no model needed.

:func:`record_workload` runs lm-eval's own ``simple_evaluate`` over a :class:`RecordingLM`: lm-eval
loads the tasks, applies ``--num_fewshot`` and the few-shot seed, builds every document's requests
(``--limit``), clones repeats, and calls the model once per request type with every task's requests,
exactly as it calls ``hf_ext`` or ``vllm_ext``. The recorder keeps those calls and answers with
neutral values (``(0.0, False)``, ``0.0``, ``""``) so lm-eval can finish; the metrics it then computes
are meaningless and dropped. Each document's reference answer (lm-eval's ``target``) comes along:
it is the central guess of a generation's length.

Task lookup: the shipped ``tasks/`` and the user's ``--include_path`` first, without lm-eval's index
of its ~14,700 built-in tasks (4-5 s to build); the built-in index only when a name is not there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lm_eval_ext.errors import UserError, did_you_mean
from lm_eval_ext.tasks_dir import shipped_tasks_dir

logger = logging.getLogger(__name__)

_NEUTRAL = {"loglikelihood": (0.0, False), "loglikelihood_rolling": 0.0, "generate_until": ""}


def _recording_lm_class():
    from lm_eval.api.model import LM

    class RecordingLM(LM):
        """An lm-eval model that keeps each call's requests and answers neutrally."""

        def __init__(self) -> None:
            super().__init__()
            self.calls: dict[str, list] = {}

        def _record(self, request_type: str, requests: list) -> list:
            self.calls.setdefault(request_type, []).extend(requests)
            return [_NEUTRAL[request_type]] * len(requests)

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._record("loglikelihood", requests)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._record("loglikelihood_rolling", requests)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self._record("generate_until", requests)

    return RecordingLM


@dataclass
class Workload:
    """What lm-eval would ask the model, per request type, in the order it would ask."""

    calls: dict[str, list[Any]]
    """request type -> lm-eval ``Instance`` objects, repeats cloned (one call per type)"""
    targets: dict[tuple[str, int], str] = field(default_factory=dict)
    """(task, doc_id) -> the reference answer lm-eval logs, for generation tasks"""

    @property
    def tasks(self) -> list[str]:
        return sorted({r.task_name for requests in self.calls.values() for r in requests})

    def num_documents(self, task: str) -> int:
        return len({r.doc_id for requests in self.calls.values() for r in requests if r.task_name == task})


def task_manager(tasks: Sequence[str], include_paths: Sequence[str] = ()):
    """A TaskManager that knows every name in ``tasks``; one line naming the unknown one otherwise."""
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise UserError("--tasks is empty; name one or more lm-eval tasks, e.g. --tasks arc_easy,gsm8k")
    paths = [*map(str, include_paths), str(shipped_tasks_dir())]
    manager = TaskManager(include_path=paths, include_defaults=False)
    if not _unknown(manager, tasks):
        return manager
    manager = TaskManager(include_path=paths)
    unknown = _unknown(manager, tasks)
    if unknown:
        raise UserError(f"--tasks {unknown[0]!r} is not a task, group or tag lm-eval knows"
                        f"{did_you_mean(unknown[0], manager.all_tasks)}; see `lm_eval ls tasks`, or add its "
                        "folder with --include_path")
    return manager


def _unknown(manager: Any, tasks: Sequence[str]) -> list[str]:
    known = set(manager.all_tasks)
    return [t for t in tasks if t not in known]


def record_workload(tasks: Sequence[str], *, limit: int | float | None = None, num_fewshot: int | None = None,
                    fewshot_seed: int | None = None, include_paths: Sequence[str] = (), manager: Any = None
                    ) -> Workload:
    """The requests of ``tasks`` as lm-eval would send them (one process, every document);
    ``fewshot_seed`` None is lm-eval's default; ``manager``: a :func:`task_manager` already made."""
    from lm_eval import evaluator

    manager = manager or task_manager(tasks, include_paths)
    recorder = _recording_lm_class()()
    seed = {} if fewshot_seed is None else {"fewshot_random_seed": fewshot_seed}
    quiet = [logging.getLogger(name) for name in ("lm_eval", "lm-eval")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        out = evaluator.simple_evaluate(model=recorder, tasks=list(tasks), task_manager=manager, limit=limit,
                                        num_fewshot=num_fewshot, bootstrap_iters=0, log_samples=True,
                                        verbosity="ERROR", **seed)
    except Exception as exc:  # noqa: BLE001 (after the calls only the metrics of neutral answers remain)
        if not recorder.calls:
            raise
        logger.debug("lm-eval's metrics over the neutral answers failed (%s); the requests are complete", exc)
        out = None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    return Workload(recorder.calls, _targets(out))


def _targets(out: dict | None) -> dict[tuple[str, int], str]:
    if not out:
        return {}
    return {(task, sample["doc_id"]): sample["target"] for task, samples in out.get("samples", {}).items()
            for sample in samples if isinstance(sample.get("target"), str)}
