"""``hf_ext``: lm-eval's HFLM with typed model_args, a planned layout, a scoring engine and a
request cache, composed (not mixed in).

Construction reads as config -> layout (plan, build) -> HFLM build -> engine and request front.
Each lm-eval request method is ``self.front.answer(...)``: the request cache answers what it holds,
and the rest is computed as one :class:`~lm_eval_ext.backend.call.Call` by ``hf/requests.py`` (stock
tokenisation, windows and post-processing) on the engine (``hf/compute/engine.py``), each result
stored as its batch finishes.
"""

from __future__ import annotations

import enum
import functools
import logging
from typing import Any

from lm_eval_ext.backend.call import RequestType
from lm_eval_ext.backend.front import RequestFront
from lm_eval_ext.cache.fingerprint import fingerprint
from lm_eval_ext.cache.request_cache import RequestCache
from lm_eval_ext.compat import hflm_accelerator, require
from lm_eval_ext.estimate.run_record import RunEstimate
from lm_eval_ext.hf.config import HfExtConfig
from lm_eval_ext.hf.dist import prefer_cpu_collectives, release_process_group_at_exit
from lm_eval_ext.logs import share_lm_eval_handlers
from lm_eval_ext.plan.hardware import Hardware
from lm_eval_ext.plan.launch_env import export_torch_names
from lm_eval_ext.plan.layout import build_layout

torch = require("torch", "hf")
require("transformers", "hf")
require("accelerate", "hf")

from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.models.utils import resolve_max_length  # noqa: E402

from lm_eval_ext.hf import requests as hf_requests  # noqa: E402
from lm_eval_ext.hf import request_cache as hf_cache  # noqa: E402  (imports torch)
from lm_eval_ext.hf.compute.engine import EngineSettings, ScoringEngine  # noqa: E402
from lm_eval_ext.hf.progress import CallProgress  # noqa: E402
from lm_eval_ext.rendezvous import join_process_group  # noqa: E402

logger = logging.getLogger(__name__)

#: what each request type's computation is (hf/requests.py)
_COMPUTE = {
    RequestType.LOGLIKELIHOOD: hf_requests.loglikelihood,
    RequestType.ROLLING: hf_requests.loglikelihood_rolling,
    RequestType.GENERATE: hf_requests.generate_until,
}


class ModelState(enum.Enum):
    BUILDING = "building"
    """Inside HFLM's constructor: ``self.model`` is whatever ``_create_model`` left (maybe the placeholder)."""
    DEFERRED = "deferred"
    """Weights not loaded yet; the first miss (or any read of ``self.model``) loads them."""
    LOADED = "loaded"


class HfExtLM(HFLM):
    """Transformers backend for lm-eval-ext; a drop-in for ``hf`` (same model_args spellings)."""

    #: the machine the layout is planned on; None: this one (``plan --tasks`` counts with a subclass
    #: planned on a described CPU, so a model sized for GPUs elsewhere still tokenises here)
    plan_hardware: Hardware | None = None

    def __init__(self, **model_args: Any) -> None:
        self._init_model_args = dict(model_args)  # as given: the fast path's memo key is made of them
        share_lm_eval_handlers()
        config = HfExtConfig.from_model_args(model_args)
        self.ext_config = config
        export_torch_names()  # an srun task: torch's rank names from SLURM's, before anything reads them
        prefer_cpu_collectives(torch.cuda.is_available())
        cache = RequestCache(config.cache, config.cache_dir, identity=self._model_identity,
                             label=lambda: str(self.pretrained))
        self._model_state = ModelState.BUILDING
        self._create_kwargs: dict = {}
        self._deferred_load: tuple[tuple, dict] | None = None
        self._cache_mode = cache.mode
        self._layout = build_layout(config, hardware=self.plan_hardware)  # the build description (plan.build); a dry run stops here
        if self._layout.launch is not None:  # hand-started ranks: a bounded, announced rendezvous
            join_process_group(self._layout.launch)
        super().__init__(**self._layout.hflm_kwargs)
        self._model_state = ModelState.DEFERRED if self._deferred_load else ModelState.LOADED
        self._adopt_launcher_ranks()
        self.engine = ScoringEngine(self, EngineSettings(
            max_batch_tokens=config.max_batch_tokens, share_contexts=config.share_contexts,
            prompt_lookup_num_tokens=config.prompt_lookup_num_tokens, strategy=self._layout.strategy_name,
        ))
        self.run_estimate = RunEstimate("hf", self._fingerprint_or_none, device=self._layout.device or "cpu",
                                        num_replicas=self.world_size)
        self.engine.on_counted = self.run_estimate.counted
        self.engine.expected_generated = self.run_estimate.expected_generated
        self.front = RequestFront(cache, self._computations(), prepare=self.load_weights,
                                  is_collective=self._is_collective, any_rank=self._any_rank,
                                  progress=self._progress_bar, rank=lambda: (self.rank, self.world_size),
                                  sampling_seed=functools.partial(hf_requests.sampling_seed, self))
        self._log_batching_once(config)

    @property
    def request_cache(self) -> RequestCache:
        return self.front.cache

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
        if self._cache_mode.value == "off" or not hf_cache.should_defer(kwargs):
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

    # ------------------------------------------------------------------ lm-eval's request methods

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self.front.answer(RequestType.LOGLIKELIHOOD, requests, disable_tqdm=disable_tqdm,
                                 lm_eval_hook=self.cache_hook)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self.front.answer(RequestType.ROLLING, requests, disable_tqdm=disable_tqdm, lm_eval_hook=self.cache_hook)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self.front.answer(RequestType.GENERATE, requests, disable_tqdm=disable_tqdm, lm_eval_hook=self.cache_hook)

    def _computations(self) -> dict:
        """How each request type's misses are computed: hf/requests.py over the engine; a
        seq2seq model goes through stock HFLM whole (its own batching and bars)."""
        if self.backend != "causal":
            return {kind: functools.partial(self._stock_compute, getattr(HFLM, kind.value)) for kind in RequestType}
        return {kind: functools.partial(compute, self) for kind, compute in _COMPUTE.items()}

    def _stock_compute(self, method, call) -> list:
        return method(self, list(call.requests), disable_tqdm=True)

    def _progress_bar(self, request_type: RequestType, num_requests: int, disabled: bool) -> CallProgress:
        return CallProgress(request_type.value, num_requests, disable=disabled or self.rank != 0)

    def _is_collective(self, request_type: RequestType) -> bool:
        """Every rank must enter the computation when any does if it gathers across ranks: the
        engine's first auto budget of a request type is agreed on by all ranks."""
        return self.world_size > 1 and self.engine.budgets.agreement_pending(request_type.value)

    def _any_rank(self, flag: bool) -> bool:
        if self.world_size <= 1:
            return flag
        gathered = self.all_gather(torch.tensor([int(flag)], device=self.device))
        return bool(gathered.max().item())

    # ------------------------------------------------------------------ identity and results

    def _model_identity(self):
        return hf_cache.model_identity(self, self._create_kwargs)

    def _fingerprint_or_none(self) -> str | None:
        """The request cache's fingerprint (computed here when the cache is off): the history's model key."""
        return self.request_cache.fingerprint or fingerprint(self._model_identity())

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
        info["estimate_vs_actual"] = self.run_estimate.finish(self.engine.cost_report, rank=self.rank)
        info["cost_report"] = self.engine.cost_report.as_dict()
        self.engine.cost_report.log()
        hf_cache.write_fast_path_memo(self, self._init_model_args, info)
        return info
