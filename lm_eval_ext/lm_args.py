"""EDGE: lm-eval's model constructors, with model_args that collide with its own flags refused, and
the process handlers (one-line errors, SIGTERM) installed.

lm-eval's evaluator builds every model as ``cls(**model_args, batch_size=..., max_batch_size=...,
device=...)``; ``batch_size=8`` inside ``--model_args`` then fails as ``TypeError: got multiple
values for keyword argument``. Models that mix this in say which flag to use instead, in one line.
"""

from __future__ import annotations

from typing import Any

from lm_eval_ext import interrupts
from lm_eval_ext.errors import install_excepthook
from lm_eval_ext.lm_mistakes import translate
from lm_eval_ext.model_args import merge_evaluator_args


class EvaluatorArgsChecked:
    """Mixin for an lm-eval ``LM`` subclass (put it first in the bases)."""

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        install_process_handlers()
        return cls(**merge_evaluator_args(simple_parse_args_string(arg_string), additional_config))

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None):
        install_process_handlers()
        return cls(**merge_evaluator_args(arg_dict, additional_config))


def install_process_handlers() -> None:
    """What a process running one of our models needs, installed when lm-eval builds it (never by
    an import): user mistakes printed in one line, SIGTERM handled like Ctrl-C. Every way in
    (``lm_eval``, ``accelerate launch``, ``torchrun``, ``srun``, ``lm-eval-ext run``, the Python API
    with a model name) builds the model through these two classmethods."""
    install_excepthook(translate)
    interrupts.install()
