"""The model names this plugin adds to lm-eval, as lazy ``"module:Class"`` targets.

lm-eval 0.4.13 imports ``lm_eval.models`` (which registers every built-in name) only when its
model registry is empty, so :func:`register_models` imports it first; registering into an empty
registry would make ``hf``, ``vllm`` and the rest vanish.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

#: alias -> lazy target. Keep in sync with ``[project.entry-points."lm_eval.models"]``.
MODEL_TARGETS: dict[str, str] = {
    "hf_ext": "lm_eval_ext.hf.entry:HfExtEntry",
    "vllm_ext": "lm_eval_ext.vllm.adapter:VllmExtLM",
}


def register_models() -> list[str]:
    """Register :data:`MODEL_TARGETS` with lm-eval; returns the aliases newly registered.

    Idempotent: an alias already present (from an earlier call, or from the entry point group
    that newer lm-eval reads) is left alone.
    """
    import lm_eval.models  # noqa: F401  (registers the built-in names first; see module doc)
    from lm_eval.api.registry import model_registry

    added = []
    for alias, target in MODEL_TARGETS.items():
        if alias in model_registry:
            continue
        model_registry.register(alias, target=target)
        added.append(alias)
    return added
