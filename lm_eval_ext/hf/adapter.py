"""``hf_ext``: lm-eval's HFLM with typed model_args and data parallel that really shards.

Construction reads as config -> resolve device/dtype -> build (HFLM) -> adopt the launcher's ranks.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from lm_eval_ext.compat import require
from lm_eval_ext.hf.request_cache import HfRequestCacheMixin
from lm_eval_ext.hf.config import HfExtConfig
from lm_eval_ext.hf.dist import prefer_cpu_collectives, release_process_group_at_exit
from lm_eval_ext.errors import install_excepthook
from lm_eval_ext.plan.layout import build_layout
from lm_eval_ext.logs import share_lm_eval_handlers

torch = require("torch", "hf")
require("transformers", "hf")
require("accelerate", "hf")

from lm_eval.models.huggingface import HFLM  # noqa: E402

from lm_eval_ext.hf.engine import ScoringEngineMixin  # noqa: E402  (imports torch)

logger = logging.getLogger("lm_eval_ext.hf")
install_excepthook()


def resolve_device(requested: str) -> str:
    """``auto`` -> cuda when present, else cpu. A CUDA device on a machine without CUDA falls back
    to cpu with a warning, as stock ``hf`` does: lm-eval's CLI passes ``device=cuda:0`` by default,
    so refusing it would break every CPU run that did not spell ``--device cpu``."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("device=%s requested but no CUDA device is visible; using cpu", requested)
        return "cpu"
    return requested


def resolve_dtype(requested: str, device: str) -> str:
    """``auto``: float32 on CPU (bf16 matmuls there are slow and less exact), bfloat16 on GPUs
    that support it, else the checkpoint's own dtype."""
    if requested != "auto":
        return requested
    if device.startswith("cpu"):
        return "float32"
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "auto"


class HfExtLM(HfRequestCacheMixin, ScoringEngineMixin, HFLM):
    """Transformers backend for lm-eval-ext; a drop-in for ``hf`` (same model_args spellings)."""

    def __init__(self, **model_args: Any) -> None:
        self._init_model_args = dict(model_args)  # as given: the fast path's memo key is made of them
        share_lm_eval_handlers()
        config = HfExtConfig.from_model_args(model_args)
        prefer_cpu_collectives(torch.cuda.is_available())
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        self._init_request_cache(mode=config.cache, cache_dir=config.cache_dir)
        self._layout = build_layout(config, device=device, dtype=dtype)  # plan -> device / device_map
        super().__init__(**{**config.hflm_kwargs(device=device, dtype=dtype), **self._layout.hflm_overrides()})
        self.ext_config = config
        self._adopt_launcher_ranks()
        self._init_scoring_engine(max_batch_tokens=config.max_batch_tokens, share_contexts=config.share_contexts,
                                  prompt_lookup_num_tokens=config.prompt_lookup_num_tokens)

    def _adopt_launcher_ranks(self) -> None:
        """Shard documents over every process of the launch, GPUs or not.

        Stock HFLM sets rank/world_size only when it sees more than one GPU, so on CPU every
        process evaluates everything; and it uses the *local* process index, which repeats across
        nodes. We take accelerate's global process index whenever more than one process runs.
        """
        accelerator = getattr(self, "accelerator", None)
        if accelerator is None or accelerator.num_processes <= 1:
            return
        self._rank = accelerator.process_index
        self._world_size = accelerator.num_processes
        release_process_group_at_exit()
        if self._rank == 0:
            logger.info("data parallel over %d processes (%s)", self._world_size, accelerator.distributed_type)

    def _get_accelerate_args(self, *args, **kwargs) -> dict:
        """The planned device_map and max_memory, instead of lm-eval's parallelize defaults."""
        if self._layout.accelerate_args is not None:
            return dict(self._layout.accelerate_args)
        return super()._get_accelerate_args(*args, **kwargs)

    def _cache_compute_is_collective(self, request_type: str) -> bool:
        """Every rank enters the computation when any does if it gathers across ranks: HFLM's
        rolling windows (cache mixin) or the scoring engine's first auto budget of a kind."""
        return (super()._cache_compute_is_collective(request_type)
                or self._engine_agreement_pending(request_type))

    def _log_shard(self, request_type: str, requests: list) -> None:
        self.note_request_tasks(request_type, requests)
        docs = Counter((r.task_name, r.doc_id) for r in requests)
        logger.info(
            "rank %d/%d: %s: %d requests over %d documents",
            self.rank, self.world_size, request_type, len(requests), len(docs),
        )

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self._log_shard("loglikelihood", requests)
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        self._log_shard("loglikelihood_rolling", requests)
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = False):
        self._log_shard("generate_until", requests)
        return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["lm_eval_ext_model"] = "hf_ext"
        info["data_parallel_size"] = self.world_size
        info.update(self._layout.model_info())
        self._write_fast_path_memo(self._init_model_args, info)
        return info
