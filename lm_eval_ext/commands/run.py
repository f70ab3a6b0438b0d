"""``lm-eval-ext run ARGS...``: lm-eval's own CLI with our models registered and ``tasks/`` included.

Every argument is lm-eval's (``--model hf_ext --model_args ... --tasks ...``). The shipped task
folder joins whatever ``--include_path`` the user gave: lm-eval's CLI accepts only one folder there
(``a,b`` silently finds nothing), so the folder is added where the CLI builds its TaskManager.
"""

from __future__ import annotations

import os
import sys

from lm_eval_ext import interrupts
from lm_eval_ext.errors import UserError
from lm_eval_ext.lm_mistakes import TRANSLATED, translate
from lm_eval_ext.tasks_dir import shipped_tasks_dir


def add_arguments(parser) -> None:  # the arguments are lm-eval's; lm-eval parses them
    return None


def include_paths(user_paths, shipped: str) -> list:
    """The user's include path(s) (None, one path or a list) followed by the shipped folder."""
    if user_paths is None:
        paths = []
    elif isinstance(user_paths, (list, tuple)):
        paths = list(user_paths)
    else:
        paths = [user_paths]
    return paths if shipped in map(str, paths) else [*paths, shipped]


def check_include_paths(paths: list) -> None:
    """A path that does not exist is refused: lm-eval skips it silently, then cannot find the task."""
    for path in paths:
        if not os.path.exists(str(path)):
            raise UserError(f"--include_path {path}: no such file or folder; give the folder holding your task YAMLs "
                            "(lm-eval-ext's own tasks are included without it)")


def _flag_value(argv: list[str], *names: str) -> str | None:
    """The value of the last ``--name VALUE`` / ``--name=VALUE`` in lm-eval's arguments."""
    value = None
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name and index + 1 < len(argv):
                value = argv[index + 1]
            elif arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value


def check_argv(argv: list[str]) -> None:
    """What lm-eval accepts and then runs wrong: a negative ``--num_fewshot`` (lm-eval takes it and
    builds prompts from a negative slice of the few-shot pool, status 0)."""
    shots = _flag_value(argv, "--num_fewshot", "-f")
    if shots is not None and shots.lstrip("-").isdigit() and int(shots) < 0:
        raise UserError(f"--num_fewshot {shots} must be 0 or more (the number of examples before each question); "
                        "pass e.g. --num_fewshot 5, or drop it for the task's own")


def _index_shipped_tasks_everywhere() -> None:
    from lm_eval.tasks import TaskManager

    original_init = TaskManager.__init__
    shipped = str(shipped_tasks_dir())

    def init(self, *args, include_path=None, **kwargs):
        paths = include_paths(include_path, shipped)
        check_include_paths(paths)
        original_init(self, *args, include_path=paths, **kwargs)

    TaskManager.__init__ = init


def main(argv: list[str]) -> int:
    interrupts.install()  # before lm-eval's imports: a SIGTERM while they load ends the run in one line too
    from lm_eval.__main__ import cli_evaluate

    from lm_eval_ext.registry import register_models

    register_models()
    _index_shipped_tasks_everywhere()
    check_argv(argv)
    sys.argv = ["lm-eval-ext run", *argv]
    try:
        cli_evaluate()
    except TRANSLATED as exc:
        message = translate(exc)
        if message is None:
            raise
        raise UserError(message) from None
    return 0
