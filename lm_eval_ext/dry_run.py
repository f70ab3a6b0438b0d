"""Moved to :mod:`lm_eval_ext.plan.dry_run`; this name stays only for ``vllm/adapter.py``'s class,
which imports it until the request-path rewrite drops that import (then delete this file)."""

from lm_eval_ext.plan.dry_run import finish_dry_run, is_dry_run  # noqa: F401
