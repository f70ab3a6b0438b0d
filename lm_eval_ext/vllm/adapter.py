"""``vllm_ext``: stock lm-eval ``vllm`` with planned sizes, persistent replicas and a server mode.

Construction reads as config -> build description (planner) -> tokenizer -> engine (deferred to the first request-cache
miss). Between lm-eval's requests and the engine (tokenization, rolling windows, truncation, logprob
parsing, stop handling) ``vllm_ext`` runs stock ``VLLM`` code or stock's helpers step by step, so
results equal stock; results are handed to the request cache as the engine returns them. Token-id
prompts go to one of three engines:

- in-process (``data_parallel_size=1``): one ``vllm.LLM`` here, tensor parallel inside it;
- data parallel: :class:`~lm_eval_ext.vllm.replicas.ReplicaPool`, started once per run;
- server mode (``base_url=...``): :class:`~lm_eval_ext.vllm.server_client.ServerEngine`.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from lm_eval_ext.backend.call import Call, RequestType
from lm_eval_ext.backend.cost_report import CostReport
from lm_eval_ext.backend.front import RequestFront
from lm_eval_ext.backend.lm_requests import encode_pairs
from lm_eval_ext.cache.fingerprint import fingerprint
from lm_eval_ext.cache.request_cache import RequestCache
from lm_eval_ext.compat import require
from lm_eval_ext.errors import ConfigError
from lm_eval_ext.estimate.run_record import RunEstimate
from lm_eval_ext.vllm.request_cache import vllm_identity, vllm_label
from lm_eval_ext.lm_args import EvaluatorArgsChecked
from lm_eval_ext.plan.hardware import Hardware
from lm_eval_ext.plan.launch_env import read_launch_env
from lm_eval_ext.vllm.build import VllmBuild
from lm_eval_ext.vllm.config import AUTO, VllmExtConfig
from lm_eval_ext.vllm.engines import InProcessEngine
from lm_eval_ext.vllm.prepare import (  # construction steps, moved there (tests import plan_build there)
    check_buildable_here, pin_in_process, plan_build, planned_model_config, read_hf_config,
)
from lm_eval_ext.vllm.shards import NodeShards
from lm_eval_ext.vllm.sizes import VllmSizes
from lm_eval_ext.vllm.token_count import (
    count_vllm_generation, count_vllm_scoring, documents_as_requests, scoring_settings,
)

require("vllm", "vllm")

from lm_eval.api.model import TemplateLM  # noqa: E402
from lm_eval.models.utils import configure_pad_token  # noqa: E402
from lm_eval.models.vllm_causallms import VLLM, SamplingParams, get_tokenizer  # noqa: E402

logger = logging.getLogger(__name__)


def build_engine(config: VllmExtConfig, build: VllmBuild | None) -> Any:
    if config.is_server_mode:
        from lm_eval_ext.vllm.server_client import ServerEngine

        return ServerEngine.from_config(config)
    from lm_eval_ext.vllm.replicas import ReplicaPool

    if len(build.replicas) == 1:
        pin_in_process(build.replicas[0].env)
        return InProcessEngine(build.replicas[0].engine_args)
    return ReplicaPool(build.replicas[0].engine_args, [replica.env for replica in build.replicas])


class VllmExtLM(EvaluatorArgsChecked, VLLM):
    """vLLM backend for lm-eval-ext; a drop-in for ``vllm`` (same model_args spellings).

    Stock ``VLLM`` with lm-eval-ext's engines and a request front: requests go through the request
    cache first; with a cache to read, the engine starts on the first miss, so a fully cached run
    starts none."""

    #: the machine the sizes are planned on; None: this one (``plan --tasks`` counts with a subclass
    #: planned on the plan's machine, described or detected, without starting an engine)
    plan_hardware: Hardware | None = None

    def __init__(self, **model_args: Any) -> None:
        config = VllmExtConfig.from_model_args(model_args)
        cache = RequestCache(config.cache, config.cache_dir, identity=lambda: vllm_identity(self),
                             label=lambda: vllm_label(self))
        TemplateLM.__init__(self)  # stock VLLM.__init__ would build its own engine
        self.ext_config = config
        if config.device not in (None, "cpu", "cuda", "auto"):
            logger.warning("vllm_ext: device=%s is ignored (as by stock vllm); pick GPUs with CUDA_VISIBLE_DEVICES",
                           config.device)
        self.build: VllmBuild | None = None
        if config.is_server_mode:
            self.sizes = _server_sizes(config)
        else:
            self.build = plan_build(config, hardware=self.plan_hardware)
            self.sizes = self.build.sizes  # a dry run has stopped in plan_build, the description complete
            check_buildable_here(self.build)
        self.node_shards = NodeShards.join(read_launch_env())  # one lm_eval process per node
        if self.node_shards is not None:
            self._rank, self._world_size = self.node_shards.rank, self.node_shards.world_size
        self._config = read_hf_config(config)
        self._engine: Any = None
        self.cost_report = CostReport()
        self._adopt_stock_attributes(config)
        self._note_batch_size()
        if config.is_server_mode:  # no engine of ours to start; the identity needs the server's answer
            self._max_length = self._checked_max_length(self.engine.max_model_len)
        else:
            self._planned_model_config = planned_model_config(config, self.sizes)
            self._max_length = self._checked_max_length(self._planned_model_config.max_model_len)
        on_gpus = self.build is not None and self.build.plan is not None and self.build.plan.device == "cuda"
        self.run_estimate = RunEstimate("vllm-server" if config.is_server_mode else "vllm", self._fingerprint_or_none,
                                        device="cuda" if on_gpus else "cpu",
                                        num_replicas=self.sizes.data_parallel_size * self.world_size)
        self.front = RequestFront(cache, {RequestType.LOGLIKELIHOOD: self._score, RequestType.ROLLING: self._score_rolling,
                                          RequestType.GENERATE: self._generate},
                                  prepare=lambda: self.engine, rank=lambda: (self.rank, self.world_size),
                                  on_call_done=lambda kind, wall_s: self.run_estimate.call_done(kind.value, wall_s))
        if not cache.mode.reads:
            self.engine  # noqa: B018  (nothing to read first: start it now)

    @property
    def engine(self) -> Any:
        """The running engine; started here on first use."""
        if self._engine is None:
            engine = build_engine(self.ext_config, self.build)
            weakref.finalize(self, engine.close)
            if not self.ext_config.is_server_mode and engine.max_model_len != self._max_length:
                engine.close()  # the cache keys were computed for the planned context window
                raise RuntimeError(f"vllm_ext: the engine's max_model_len={engine.max_model_len} differs from "
                                   f"the planned {self._max_length}; pass max_model_len explicitly")
            self._engine = engine
            logger.info("vllm_ext: %s engine ready, max_model_len=%d", engine.kind, engine.max_model_len)
        return self._engine

    @property
    def engine_started(self) -> bool:
        return self._engine is not None

    # lm-eval's evaluator shards documents by rank and gathers through these (vllm/shards.py)
    def all_gather(self, tensor):
        return tensor if self.node_shards is None else self.node_shards.all_gather(tensor)

    def gather_object(self, obj, dst=0):
        return [obj] if self.node_shards is None else self.node_shards.gather_object(obj, dst)

    def barrier(self) -> None:
        if self.node_shards is not None:
            self.node_shards.barrier()

    def _adopt_stock_attributes(self, config: VllmExtConfig) -> None:
        """The attributes stock ``VLLM`` methods read, set from the typed config."""
        self.tensor_parallel_size = self.sizes.tensor_parallel_size
        self.data_parallel_size = self.sizes.data_parallel_size
        # "auto" and lm-eval's "auto:N" both mean: hand vLLM every request at once (it schedules them)
        self.batch_size = "auto" if isinstance(config.batch_size, str) else config.batch_size
        self.add_bos_token = config.add_bos_token
        self.custom_prefix_token_id = config.prefix_token_id
        self._max_gen_toks = config.max_gen_toks
        self.truncation_side = config.truncation_side
        self.think_end_token = config.think_end_token
        self.enable_thinking = config.enable_thinking
        self.chat_template_args = {}
        self.lora_request = None
        self.tokenizer = get_tokenizer(
            config.tokenizer or config.pretrained,
            tokenizer_mode=config.tokenizer_mode,
            trust_remote_code=config.trust_remote_code,
            revision=config.tokenizer_revision,
            **({"add_bos_token": config.add_bos_token} if config.add_bos_token is not None else {}),
        )
        self.tokenizer = configure_pad_token(self.tokenizer, model_config=self._config)
        self.hf_chat_template = None  # the tokenizer's own template (stock asks vLLM, same result for HF tokenizers)

    def _note_batch_size(self) -> None:
        """Loglikelihood calls reach the engine whole (an item's choices must meet in one engine
        call to share their context; vLLM batches by tokens): say so, a warning when the user chose
        a batch_size (lm-eval passes 1 unless told otherwise)."""
        if self.rank != 0:
            return
        log = logger.warning if self.batch_size not in (1, "auto") else logger.info
        log("vllm_ext scores every loglikelihood request of a call in one engine call (vLLM's scheduler batches "
            "them by tokens; max_batch_size caps its sequences); batch_size=%s is used for generation only",
            self.batch_size)

    def _checked_max_length(self, engine_max_len: int) -> int:
        requested = self.sizes.max_model_len
        if requested is not None and requested > engine_max_len:
            planned = " (planned from the model's window)" if self.ext_config.requested_max_model_len == AUTO else ""
            raise ConfigError(
                f"max_model_len={requested}{planned} exceeds the {engine_max_len} vLLM allows for this model; "
                f"use max_model_len={engine_max_len} or less"
            )
        return requested or engine_max_len

    @property
    def num_engine_starts(self) -> int:
        """Model loads this run caused (one per replica; stock DP: one per replica per request type)."""
        return self._engine.num_engine_starts if self._engine is not None else 0

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()

    def _model_generate(self, requests: list[list[int]], generate: bool = False, sampling_params=None):
        if not generate or sampling_params is None:
            sampling_params = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False)
        if not isinstance(sampling_params, list):
            sampling_params = [sampling_params] * len(requests)
        return self.engine.run(requests, sampling_params)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Stock truncation and parsing; the choices of one item (same context) go to the engine together."""
        from lm_eval_ext.vllm.scoring import score_requests

        return score_requests(self, requests)

    # ------------------------------------------------------------------ lm-eval's request methods

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self.front.answer(RequestType.LOGLIKELIHOOD, requests, lm_eval_hook=self.cache_hook)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self.front.answer(RequestType.ROLLING, requests, lm_eval_hook=self.cache_hook)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self.front.answer(RequestType.GENERATE, requests, lm_eval_hook=self.cache_hook)

    # each computes the requests the cache could not answer, as one call: results are reported as
    # the engine returns them (``call.result``) and each engine batch is stored (``call.batch_done``)
    def _score(self, call: Call) -> None:
        from lm_eval_ext.vllm.scoring import score_requests

        pairs = encode_pairs(self, call.requests)
        self.run_estimate.counted(call.request_type.value, count_vllm_scoring(
            pairs, [call.task_of(i) for i in range(len(pairs))], max_length=self.max_length, **scoring_settings(self)))
        score_requests(self, [(r.args, ctx, cont) for r, (ctx, cont) in zip(call.requests, pairs)],
                       call.result, call.batch_done, tasks=[call.task_of(i) for i in range(len(call.requests))])

    def _score_rolling(self, call: Call) -> None:
        from lm_eval_ext.vllm.scoring import rolling_loglikelihoods

        def count(windows: list, owner: list[int]) -> None:
            counts = count_vllm_scoring(windows, [call.task_of(d) for d in owner], max_length=self.max_length,
                                        **scoring_settings(self))
            self.run_estimate.counted(call.request_type.value, documents_as_requests(counts, call))

        rolling_loglikelihoods(self, call, on_windows=count)

    def _generate(self, call: Call) -> None:
        from lm_eval_ext.vllm.generation import generate_texts

        def count(prepared: list) -> None:
            tasks = [call.task_of(i) for i in range(len(prepared))]
            budgets = [params.max_tokens for _, params, _ in prepared]
            self.run_estimate.counted(call.request_type.value, count_vllm_generation(
                [tokens for tokens, _, _ in prepared], budgets, tasks,
                [self.run_estimate.expected_generated(t, b) for t, b in zip(tasks, budgets)],
                block_size=scoring_settings(self)["block_size"], prefix_caching=self.ext_config.enable_prefix_caching))

        generate_texts(self, call, on_prepared=count)

    @property
    def request_cache(self) -> RequestCache:
        return self.front.cache

    def _fingerprint_or_none(self) -> str | None:
        """The request cache's fingerprint (computed here when the cache is off): the history's model key."""
        return self.request_cache.fingerprint or fingerprint(vllm_identity(self))

    def request_cache_report(self) -> dict:
        report = self.request_cache.report(rank=self.rank, world_size=self.world_size)
        report["engine_started"] = self.engine_started
        return report

    def get_model_info(self) -> dict:
        info = {
            "lm_eval_ext_model": "vllm_ext",
            "vllm_mode": engine_kind(self.ext_config, self.sizes),
            "vllm_sizes": self.sizes.as_dict(),
            "lm_eval_ext_plan": self.build.plan.to_json() if self.build is not None else None,
            "max_model_len": self._max_length,
            "engine_starts": self.num_engine_starts,
            "model_name": self.ext_config.pretrained,
            "request_cache": self.request_cache_report(),
            "estimate_vs_actual": self.run_estimate.finish(rank=self.rank),
            "cost_report": self.cost_report.as_dict(),
        }
        if self.ext_config.base_url:
            info["base_url"] = self.ext_config.base_url
        self.cost_report.log()
        return info


def engine_kind(config: VllmExtConfig, sizes: VllmSizes) -> str:
    if config.is_server_mode:
        return "server"
    return "in_process" if sizes.data_parallel_size == 1 else "data_parallel"


def _server_sizes(config: VllmExtConfig) -> VllmSizes:
    requested = config.requested_max_model_len
    max_len = None if requested == "auto" else requested
    return VllmSizes(1, 1, max_len, 0.0, ("server mode: the server owns its parallel layout",))

