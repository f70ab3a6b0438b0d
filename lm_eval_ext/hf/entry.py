"""What lm-eval builds for ``--model hf_ext``: the real backend, or a cache-only front for a re-run.

``HfExtEntry(**model_args)`` returns an :class:`~lm_eval_ext.hf.adapter.HfExtLM` unless a memo of
an earlier run with the same model, files, arguments and package versions exists (see
:mod:`lm_eval_ext.cache.fast_path`); then it returns a front that answers requests from the request
cache without importing torch or transformers. The first request the cache cannot answer (or
any attribute the front does not know) builds the real backend, which serves the rest of the run
and re-checks the cache itself, so a front never changes a result: at worst it costs the import
it tried to save.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lm_eval.api.model import LM

from lm_eval_ext.backend.call import RequestType
from lm_eval_ext.backend.cost_report import CostReport
from lm_eval_ext.cache.fast_path import memo_key, read_memo
from lm_eval_ext.cache.layout import store_exists
from lm_eval_ext.cache.request_cache import RequestCache
from lm_eval_ext.cache.store import default_cache_dir
from lm_eval_ext.hf.config import HfExtConfig
from lm_eval_ext.lm_args import EvaluatorArgsChecked

logger = logging.getLogger(__name__)


def _real_backend(model_args: dict[str, Any]):
    from lm_eval_ext.hf.adapter import HfExtLM

    return HfExtLM(**model_args)


class HfExtEntry(EvaluatorArgsChecked, LM):
    """Registered as ``hf_ext``; see the module docstring."""

    MULTIMODAL = False  # as HFLM; lm-eval reads it for every run

    def __new__(cls, **model_args: Any):
        config = HfExtConfig.from_model_args(model_args)  # bad input fails here, as in the backend
        cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
        key = memo_key(model_args)
        memo = read_memo(cache_dir, key) if key else None
        if memo is None or not store_exists(cache_dir):
            return _real_backend(model_args)
        front = super().__new__(cls)
        front._memo, front._cache_dir, front._cache_mode = memo, cache_dir, config.cache
        return front

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        self._model_args = dict(model_args)
        self._cache = RequestCache(self._cache_mode, self._cache_dir, known_fingerprint=self._memo["fingerprint"])
        self._backend = None
        self.batch_sizes: dict = {}
        logger.info("request cache: %s remembers model %s; answering from the cache before loading "
                    "the backend", self._cache_dir, self._memo["fingerprint"][:16])

    # ------------------------------------------------------------------ what lm-eval reads

    @property
    def tokenizer(self) -> SimpleNamespace:
        return SimpleNamespace(**self._memo["tokenizer"])

    @property
    def config(self) -> SimpleNamespace:
        """lm-eval names the model in its results from ``model.config._name_or_path`` when handed a
        model object (``hasattr(model, "config")``): answered here, so that probe loads nothing."""
        return SimpleNamespace(_name_or_path=str(self._model_args.get("pretrained")))

    @property
    def eot_token_id(self) -> Any:
        return self._memo["eot_token_id"]

    @property
    def max_length(self) -> int:
        return self._memo["max_length"]

    def __getattr__(self, name: str) -> Any:
        # only reached for names the front does not define: they need the real backend
        if name.startswith("_"):
            raise AttributeError(name)
        logger.info("request cache: '%s' needs the hf_ext backend; loading it", name)
        return getattr(self._load_backend(), name)

    # ------------------------------------------------------------------ requests

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self._answer(RequestType.LOGLIKELIHOOD, requests, disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self._answer(RequestType.ROLLING, requests, disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self._answer(RequestType.GENERATE, requests, disable_tqdm)

    def _answer(self, request_type: RequestType, requests: list, disable_tqdm: bool) -> list:
        if self._backend is None:
            values = self._cache.lookup(request_type.value, requests, all_or_nothing=True)
            if values is not None:
                logger.info("request cache: %s: %d hits, 0 computed (backend not loaded)", request_type.value,
                            len(requests))
                return values
            logger.info("request cache: %s: not every request is cached; loading the hf_ext backend",
                        request_type.value)
        return getattr(self._load_backend(), request_type.value)(requests, disable_tqdm=disable_tqdm)

    def _load_backend(self):
        if self._backend is None:
            backend = _real_backend(self._model_args)
            backend.request_cache.stats = self._cache.stats  # one report for the whole run
            backend.set_cache_hook(self.cache_hook)
            self._backend = backend
        return self._backend

    # ------------------------------------------------------------------ results

    def get_model_info(self) -> dict:
        if self._backend is not None:
            return self._backend.get_model_info()
        info = dict(self._memo["model_info"])
        info["request_cache"] = self._cache.report(rank=0, world_size=1)
        info["request_cache"].update(model_loaded=False, fast_path=True)
        info["cost_report"] = CostReport().as_dict()
        return info
