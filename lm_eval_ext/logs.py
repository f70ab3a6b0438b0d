"""Our log lines go where lm-eval's go: lm-eval configures only its own ``lm_eval`` logger (and
stops it propagating), so records of ``lm_eval_ext.*`` would otherwise be dropped below WARNING."""

from __future__ import annotations

import logging


def share_lm_eval_handlers() -> None:
    ours, theirs = logging.getLogger("lm_eval_ext"), logging.getLogger("lm_eval")
    if ours.handlers or not theirs.handlers:
        return
    for handler in theirs.handlers:
        ours.addHandler(handler)
    ours.setLevel(theirs.level)
    ours.propagate = False
