"""``lm-eval-ext run ARGS...``: lm-eval's own CLI with our models registered and ``tasks/`` included.

Every argument is lm-eval's (``--model hf_ext --model_args ... --tasks ...``). The shipped task
folder joins whatever ``--include_path`` the user gave: lm-eval's CLI accepts only one folder there
(``a,b`` silently finds nothing), so the folder is added where the CLI builds its TaskManager.
"""

from __future__ import annotations

import sys

from lm_eval_ext import interrupts
from lm_eval_ext.errors import UserError
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
    interrupts.install()  # before lm-eval's imports: a SIGTERM while they load ends the run in one line too
    from lm_eval.__main__ import cli_evaluate

    from lm_eval_ext.registry import register_models

    register_models()
    _index_shipped_tasks_everywhere()
    sys.argv = ["lm-eval-ext run", *argv]
    try:
        cli_evaluate()
    except (KeyError, ValueError) as exc:
        message = lm_eval_mistake(exc)
        if message is None:
            raise
        raise UserError(message) from None
    return 0


def _first_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__


def lm_eval_mistake(exc: BaseException) -> str | None:
    """lm-eval's own message for a mistyped ``--tasks`` or ``--model``, in one line; ``None`` for
    anything else (that keeps its traceback: it is not the user's typing)."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 8:
        chain.append(chain[-1].__cause__)
    lines = [_first_line(e) for e in chain]
    if lines[0].startswith("Tasks not found:"):
        return (f"{lines[0]}; `lm_eval ls tasks --include_path {shipped_tasks_dir()}` lists every task "
                "(lm-eval-ext ships ext_suite, ext_arith_mc, ext_copy_gen, ext_prose_rolling)")
    if lines[0].startswith("Attempted to load model"):
        hint = next((line for line in lines if line.startswith("Unknown model")), lines[0].split("!")[0] + ".")
        return f"--model: {hint} (lm-eval-ext adds hf_ext and vllm_ext)"
    return None
