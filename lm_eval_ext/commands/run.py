"""``lm-eval-ext run ARGS...``: lm-eval's own CLI with our models registered and ``tasks/`` included.

Every argument is lm-eval's (``--model hf_ext --model_args ... --tasks ...``). The shipped task
folder joins whatever ``--include_path`` the user gave: lm-eval's CLI accepts only one folder there
(``a,b`` silently finds nothing), so the folder is added where the CLI builds its TaskManager.
"""

from __future__ import annotations

import sys

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


def _index_shipped_tasks_everywhere() -> None:
    from lm_eval.tasks import TaskManager

    original_init = TaskManager.__init__
    shipped = str(shipped_tasks_dir())

    def init(self, *args, include_path=None, **kwargs):
        original_init(self, *args, include_path=include_paths(include_path, shipped), **kwargs)

    TaskManager.__init__ = init


def main(argv: list[str]) -> int:
    from lm_eval.__main__ import cli_evaluate

    from lm_eval_ext.registry import register_models

    register_models()
    _index_shipped_tasks_everywhere()
    sys.argv = ["lm-eval-ext run", *argv]
    cli_evaluate()
    return 0
