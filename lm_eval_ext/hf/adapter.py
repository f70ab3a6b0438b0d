"""``hf_ext``: lm-eval's HFLM with typed model_args, a planned layout, a scoring engine and a
request cache, composed (not mixed in).

Construction reads as config -> layout (plan) -> HFLM build -> engine. Each lm-eval request method
is defined once here: look the requests up in the cache, compute what is missing through HFLM's
stock method (whose narrow hooks ``_loglikelihood_tokens`` / ``_model_generate`` go to the engine),
store as results arrive.
"""

from __future__ import annotations

import contextlib

import enum
import functools
import logging
from collections import Counter
from typing import Any

from lm_eval_ext.cache.cached_lm import RequestCache
from lm_eval_ext.compat import hflm_accelerator, require
from lm_eval_ext.errors import install_excepthook
from lm_eval_ext.hf.config import HfExtConfig
from lm_eval_ext.hf.dist import prefer_cpu_collectives, release_process_group_at_exit
from lm_eval_ext.logs import share_lm_eval_handlers
from lm_eval_ext.model_args import is_auto_batch_size
from lm_eval_ext.plan.layout import build_layout

torch = require("torch", "hf")
require("transformers", "hf")
require("accelerate", "hf")

from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.models.utils import resolve_max_length  # noqa: E402

from lm_eval_ext.hf import request_cache as hf_cache  # noqa: E402  (imports torch)
from lm_eval_ext.rendezvous import join_process_group  # noqa: E402
from lm_eval_ext.hf.compute.engine import WHOLE_CALL, EngineSettings, ScoringEngine  # noqa: E402

logger = logging.getLogger("lm_eval_ext.hf")
install_excepthook()

_REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")


class ModelState(enum.Enum):
    BUILDING = "building"
    """Inside HFLM's constructor: ``self.model`` is whatever ``_create_model`` left (maybe the placeholder)."""
    DEFERRED = "deferred"
    """Weights not loaded yet; the first miss (or any read of ``self.model``) loads them."""
    LOADED = "loaded"


class HfExtLM(HFLM):
    """Transformers backend for lm-eval-ext; a drop-in for ``hf`` (same model_args spellings)."""

    def __init__(self, **model_args: Any) -> None:
        self._init_model_args = dict(model_args)  # as given: the fast path's memo key is made of them
        share_lm_eval_handlers()
        config = HfExtConfig.from_model_args(model_args)
        self.ext_config = config
        prefer_cpu_collectives(torch.cuda.is_available())
        self.request_cache = RequestCache(config.cache, config.cache_dir, identity=self._model_identity,
                                          label=lambda: str(self.pretrained))
        self._model_state = ModelState.BUILDING
        self._create_kwargs: dict = {}
        self._deferred_load: tuple[tuple, dict] | None = None
        self._layout = build_layout(config)  # the build description (plan.build); a dry run stops here
        if self._layout.launch is not None:  # hand-started ranks: a bounded, announced rendezvous
            join_process_group(self._layout.launch)
        super().__init__(**self._layout.hflm_kwargs)
        self._model_state = ModelState.DEFERRED if self._deferred_load else ModelState.LOADED
        self._adopt_launcher_ranks()
        self.engine = ScoringEngine(self, EngineSettings(
            max_batch_tokens=config.max_batch_tokens, share_contexts=config.share_contexts,
            prompt_lookup_num_tokens=config.prompt_lookup_num_tokens, strategy=self._layout.strategy_name,
        ))
        self._log_batching_once(config)

    def _log_batching_once(self, config: HfExtConfig) -> None:
        """Rank 0 says which budget batches requests and that ``batch_size`` does not (lm-eval
        always passes one); a ``batch_size`` the user chose is a warning."""
        if self.rank != 0 or config.max_batch_tokens is None:
            return
        log = logger.warning if self.batch_size not in (1, None) else logger.info
        log("hf_ext batches every request type by tokens (max_batch_tokens=%s); batch_size=%s is not used "
            "(max_batch_tokens=off restores stock batching by batch_size)", config.max_batch_tokens, self.batch_size)

    def _adopt_launcher_ranks(self) -> None:
        """Shard documents over every process of the launch, GPUs or not.

        Stock HFLM sets rank/world_size only when it sees more than one GPU, so on CPU every
        process evaluates everything; and it uses the *local* process index, which repeats across
        nodes. We take accelerate's global process index whenever more than one process runs.
        """
        accelerator = hflm_accelerator(self)
        if accelerator is None or accelerator.num_processes <= 1:
            return
        self._rank = accelerator.process_index
        self._world_size = accelerator.num_processes
        release_process_group_at_exit()
        if self._rank == 0:
            logger.info("data parallel over %d processes (%s)", self._world_size, accelerator.distributed_type)

    # ------------------------------------------------------------------ weights, loaded late

    def _create_model(self, *args: Any, **kwargs: Any) -> None:
        self._create_kwargs = kwargs
        if self.request_cache.mode.value == "off" or not hf_cache.should_defer(kwargs):
            HFLM._create_model(self, *args, **kwargs)
            return
        self._deferred_load = (args, kwargs)
        self._model = hf_cache.DeferredModel(self._config)

    def load_weights(self) -> None:
        """Load deferred weights now (no-op when they are loaded)."""
        if self._model_state is not ModelState.DEFERRED:
            return
        args, kwargs = self._deferred_load
        hf_cache.load_deferred_weights(self, self._model, args, kwargs)
        self._deferred_load = None
        self._model_state = ModelState.LOADED

    @property
    def model(self):
        """The model; after construction, reading it loads deferred weights (whoever asks for the
        model needs them). HFLM's own accesses during ``__init__`` see the placeholder, which also
        keeps accelerate's unwrap (it inspects nn.Module internals) away from it."""
        if self._model_state is ModelState.DEFERRED:
            self.load_weights()
        elif self._deferred_load is not None:  # building: the placeholder, never unwrapped
            return self._model
        return super().model

    @property
    def max_length(self) -> int:
        # HFLM reads self.model.config for this; the config alone answers it without weights
        if not self._max_length and self._deferred_load is not None:
            return resolve_max_length(self._config, self.tokenizer, default=self._DEFAULT_MAX_LENGTH)
        return super().max_length

    @property
    def model_loaded(self) -> bool:
        return self._model_state is ModelState.LOADED

    def _get_accelerate_args(self, *args, **kwargs) -> dict:
        """The build description's device_map and max_memory, instead of lm-eval's defaults."""
        if self._layout.build is not None:
            return self._layout.placement_kwargs()
        return super()._get_accelerate_args(*args, **kwargs)

    # ------------------------------------------------------------------ HFLM's narrow hooks

    def _detect_batch_size(self, requests=None, pos: int = 0):
        """Stock probes at ``max_length``; here the stock rolling/generation loops hand over every
        request at once, and the engine batches them by tokens."""
        return WHOLE_CALL

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        if not requests:  # under data parallel an empty-handed rank still joins the budget agreement
            self.engine.budgets.join_agreement(self.engine.current_kind)
        if self.backend != "causal" or not requests:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        return self.engine.loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        attention_mask = generation_kwargs.get("attention_mask")
        options = {k: v for k, v in generation_kwargs.items() if k != "attention_mask"}
        if not self.engine.handles_generation(attention_mask, options):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        return self.engine.generate(context, max_length, stop, attention_mask)

    # ------------------------------------------------------------------ lm-eval's request methods

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self._answer("loglikelihood", requests, disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self._answer("loglikelihood_rolling", requests, disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self._answer("generate_until", requests, disable_tqdm)

    def _answer(self, request_type: str, requests: list, disable_tqdm: bool) -> list:
        """Look up, compute what is missing (HFLM's stock method over the engine), store."""
        self._log_shard(request_type, requests)
        self.engine.note_request_tasks(request_type, requests)
        collective = self._compute_is_collective(request_type)
        chunks = functools.partial(hf_cache.rolling_chunks, collective=collective)
        # one bar per request type, the engine's (requests/s, tokens/s), across every backend call
        # of this lm-eval call (rolling chunks); HFLM's own bars stay off (see _compute)
        bars = (contextlib.nullcontext() if self.engine.budgets.max_batch_tokens is None
                else self.engine.bars(disabled=disable_tqdm))
        with bars:
            return self._answer_through_cache(request_type, requests, disable_tqdm, collective, chunks)

    def _answer_through_cache(self, request_type, requests, disable_tqdm, collective, chunks) -> list:
        return self.request_cache.answer(
            request_type, requests, functools.partial(self._compute, request_type, disable_tqdm=disable_tqdm),
            hook_owner=self, prepare=self.load_weights,
            flush_every=self.batch_size if isinstance(self.batch_size, int) else 1,
            collective=collective, any_rank=self._any_rank,
            chunks=chunks if request_type == "loglikelihood_rolling" else (lambda todo: [todo]),
        )

    def _compute(self, request_type: str, todo: list, *, disable_tqdm: bool) -> list:
        if not todo and request_type == "generate_until":  # HFLM would return at once; join the agreement
            self.engine.budgets.join_agreement("generate_until")
            return []
        if self.engine.budgets.max_batch_tokens is None:  # off: stock batching, stock bars
            return getattr(HFLM, request_type)(self, todo, disable_tqdm=disable_tqdm)
        # HFLM's own bars (tokenizing, documents, generate_until requests) are off: the engine's
        # bar is the one (the user's disable_tqdm reached it in _answer)
        with self._whole_calls():
            return getattr(HFLM, request_type)(self, todo, disable_tqdm=True)

    @contextlib.contextmanager
    def _whole_calls(self):
        """While a token budget is on, HFLM's rolling and generation loops see a batch size no
        call reaches, so they hand the engine every window / every request of one ``gen_kwargs``
        group at once (not ``batch_size`` chunks); the engine batches them by tokens. Everything
        else (until, max_gen_toks, chat templates, truncation, output order) stays HFLM's."""
        if self.engine.budgets.max_batch_tokens is None:  # off: stock chunks (auto sizes: HFLM asks us)
            yield
            return
        saved = self.batch_size_per_gpu
        self.batch_size_per_gpu = WHOLE_CALL
        try:
            yield
        finally:
            self.batch_size_per_gpu = saved

    def _compute_is_collective(self, request_type: str) -> bool:
        """Every rank must enter the computation when any does if it gathers across ranks: HFLM's
        rolling windows, ``batch_size=auto``'s probe, or the engine's first auto budget of a kind."""
        if self.world_size <= 1:
            return False
        return (request_type == "loglikelihood_rolling" or is_auto_batch_size(self.batch_size)
                or self.engine.budgets.agreement_pending(request_type))

    def _any_rank(self, flag: bool) -> bool:
        if self.world_size <= 1:
            return flag
        gathered = self.all_gather(torch.tensor([int(flag)], device=self.device))
        return bool(gathered.max().item())

    def _log_shard(self, request_type: str, requests: list) -> None:
        docs = Counter((r.task_name, r.doc_id) for r in requests)
        logger.info("rank %d/%d: %s: %d requests over %d documents",
                    self.rank, self.world_size, request_type, len(requests), len(docs))

    # ------------------------------------------------------------------ identity and results

    def _model_identity(self):
        return hf_cache.model_identity(self, self._create_kwargs)

    def request_cache_report(self) -> dict:
        report = self.request_cache.report(rank=self.rank, world_size=self.world_size)
        report["model_loaded"] = self.model_loaded
        return report

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["lm_eval_ext_model"] = "hf_ext"
        info["data_parallel_size"] = self.world_size
        info.update(self._layout.model_info())
        info["request_cache"] = self.request_cache_report()
        info["cost_report"] = self.engine.cost_report.as_dict()
        self.engine.cost_report.log()
        hf_cache.write_fast_path_memo(self, self._init_model_args, info)
        return info
