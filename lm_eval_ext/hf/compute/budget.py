"""EDGE (torch): the token budget of each request kind for one run of ``hf_ext``.

A budget is explicit (``max_batch_tokens=N``), probed once per request kind (``auto``: GPU grow-
then-bisect on the real rows, CPU derived from available RAM; remembered in the probe cache by
what decides memory, see :class:`~lm_eval_ext.hf.compute.probe.ProbeKey`), or absent (stock request-count
batching by ``batch_size``). After an out-of-memory error the budget of that kind is lowered for the
rest of the run. Under data parallel every rank takes the minimum over ranks, so the first ``auto``
call of a kind is collective.

The host is the ``HfExtLM``: this reads its ``model``, ``device``, ``batch_size``,
``max_batch_size``, ``max_length``, ``pretrained``, ``revision``, ``world_size`` and accelerator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from lm_eval_ext.compat import hflm_accelerator
from lm_eval_ext.hf.compute import probe
from lm_eval_ext.hf.policy.batching import Batch
from lm_eval_ext.hf.compute.oom import free_memory, is_out_of_memory
from lm_eval_ext.hf.policy.token_budget import cpu_budget_tokens, search_budget
from lm_eval_ext.model_args import is_auto_batch_size
from lm_eval_ext.plan.facts import ModelFacts
from lm_eval_ext.plan.model_facts import count_model_params, facts_from_config
from lm_eval_ext.plan.token_bytes import bytes_per_token

logger = logging.getLogger(__name__)

#: what a rank with no requests offers when ranks agree on a budget (the minimum wins)
_NO_LIMIT_TOKENS = 2**62


class Budgets:
    def __init__(self, host: Any, *, max_batch_tokens: int | str | None, strategy: str,
                 default_row_tokens: int, probe_cache: probe.ProbeCache | None = None) -> None:
        self.host = host
        self.max_batch_tokens = max_batch_tokens
        self.strategy = strategy
        self.default_row_tokens = default_row_tokens
        self.probe_cache = probe_cache if probe_cache is not None else probe.ProbeCache()
        self.found: dict[str, int] = {}
        self.lowered: dict[str, int] = {}

    @property
    def is_auto(self) -> bool:
        arg = self.max_batch_tokens
        return arg == "auto" or (arg is None and is_auto_batch_size(self.host.batch_size))

    def limits(self, kind: str, stats: dict, score: Callable[[Batch], Any]) -> tuple[int | None, int | None]:
        """(max_batch_tokens, max_batch_requests) for this call of ``kind``."""
        cap, budget = None, None
        if self.is_auto:
            if kind not in self.found:
                self.found[kind] = self.find(kind, stats, score)
            budget = self.found[kind]
        elif self.max_batch_tokens is None:
            cap = int(self.host.batch_size)
        else:
            budget = int(self.max_batch_tokens)
        lowered = self.lowered.get(kind)  # an OOM earlier in this run
        if lowered is not None:
            budget = lowered if budget is None else min(budget, lowered)
        return budget, cap

    def lower(self, kind: str, budget_tokens: int) -> None:
        self.lowered[kind] = budget_tokens

    # ---- data parallel agreement -----------------------------------------------------------
    def agreement_pending(self, kind: str) -> bool:
        """Under data parallel the first auto-budget call of a kind gathers every rank's budget
        (:func:`probe.agree_min`), so a rank with nothing to compute (all cached) must take part."""
        return self.host.world_size > 1 and self.is_auto and kind not in self.found

    def join_agreement(self, kind: str | None) -> None:
        """The empty-handed side of the agreement: offer no limit, keep the others' minimum."""
        if kind is not None and self.agreement_pending(kind):
            self.found[kind] = probe.agree_min(hflm_accelerator(self.host), _NO_LIMIT_TOKENS)

    # ---- finding a budget ------------------------------------------------------------------
    def probe_key(self, kind: str) -> probe.ProbeKey:
        """What decides how many tokens fit: model, dtype, device, the strategy built, the kind."""
        device = torch.device(self.host.device)
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            name, memory = props.name, int(props.total_memory)
        else:
            import psutil

            name, memory = "cpu", int(psutil.virtual_memory().total)
        return probe.ProbeKey(
            model=f"{self.host.pretrained}@{self.host.revision}", dtype=str(self.host.model.dtype), device=name,
            device_memory_bytes=memory, strategy=self.strategy, request_kind=kind,
        )

    def find(self, kind: str, stats: dict, score: Callable[[Batch], Any]) -> int:
        key = self.probe_key(kind)
        cached = self.probe_cache.get(key)
        if cached is not None:
            budget = cached
        elif torch.device(self.host.device).type == "cuda":
            budget = self.probe_gpu(kind, stats, score)
            self.probe_cache.put(key, budget)
        else:
            budget = self.cpu_budget(kind, stats)
        budget = probe.agree_min(hflm_accelerator(self.host), budget)
        logger.info("max_batch_tokens=auto: %d tokens per %s batch", budget, kind)
        return budget

    def model_facts(self) -> ModelFacts:
        """The loaded model's sizes, read by the planner's reader (one kv-head rule, one config reader)."""
        model = self.host.model
        return facts_from_config(model.config, str(model.dtype), params=count_model_params(model))

    def cpu_budget(self, kind: str, stats: dict) -> int:
        import psutil

        token_bytes = bytes_per_token(
            self.model_facts(), scored_fraction=stats.get("scored_fraction", 1.0),
            attention_row_tokens=stats.get("row_tokens", self.default_row_tokens),
            holds_kv=kind == "generate_until",
        )
        return cpu_budget_tokens(psutil.virtual_memory().available, token_bytes, kind)

    def probe_gpu(self, kind: str, stats: dict, score: Callable[[Batch], Any]) -> int:
        """Grow-then-bisect with batches of the real rows (loglikelihood) or of the real widest
        prompt + max_gen_toks (generation: a prefill of that width holds the final KV cache)."""
        rows = stats.get("rows") or []
        width = stats.get("width_tokens") or (max((len(r) for r in rows), default=self.host.max_length))

        def fits(budget_tokens: int) -> bool:
            count = max(1, budget_tokens // max(1, width))
            try:
                if rows:
                    score(Batch([rows[i % len(rows)] for i in range(count)], stats.get("prefix", ())))
                else:
                    ids = torch.ones((count, width), dtype=torch.long, device=self.host.device)
                    with torch.no_grad():
                        self.host.model(ids, use_cache=True, logits_to_keep=1)
                return True
            except Exception as exc:  # noqa: BLE001 (only OOMs are answers; others re-raise)
                if not is_out_of_memory(exc):
                    raise
                return False
            finally:
                free_memory()

        max_tokens = max(width, int(self.host.max_batch_size) * width)
        return search_budget(fits, start_tokens=width, max_tokens=max_tokens)
