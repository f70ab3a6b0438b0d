"""Interpreter-start hook, imported by the ``lm_eval_ext_hook.pth`` file in site-packages.

Importing lm-eval costs ~70 ms (``importlib.metadata``), too much to pay in every Python process.
So this hook imports nothing heavy: it puts a finder on ``sys.meta_path`` that waits for
``lm_eval.api.registry`` to be imported and registers our models right after that module has run.
Processes that never touch lm-eval pay only for this file (well under 1 ms).
"""

import sys

_WATCHED_MODULE = "lm_eval.api.registry"


def _register_safely() -> None:
    try:
        from lm_eval_ext.registry import register_models

        register_models()
    except Exception as exc:  # a broken plugin must never break lm-eval itself
        import warnings

        warnings.warn(f"lm-eval-ext could not register its models with lm-eval: {exc!r}")


class _RegisteringLoader:
    """Wraps the real loader of the watched module; registers once the module has executed."""

    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        _register_safely()

    def __getattr__(self, name):  # get_code, get_source, ... for tools that inspect loaders
        return getattr(self._inner, name)


class _RegistryWatcher:
    """A meta path finder that answers only for the watched module, then steps aside."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _WATCHED_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


def install() -> None:
    if _WATCHED_MODULE in sys.modules:
        _register_safely()
    elif not any(isinstance(f, _RegistryWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegistryWatcher())


install()
