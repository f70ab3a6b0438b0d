"""EDGE: ``ScoringEngineMixin``, the scoring engine of ``hf_ext`` plugged into HFLM's narrow hooks.

Overridden hooks (lm-eval 0.4.13, checked by tests/unit/test_engine_contract.py):
- ``_loglikelihood_tokens``: token-budget batches of prefix-tree rows, LM head only at
  continuation positions, OOM split-and-retry. Used by ``loglikelihood`` and, through stock
  ``loglikelihood_rolling``, by rolling windows.
- ``_detect_batch_size``: stock probes at ``max_length``; here it only tells the stock
  ``loglikelihood_rolling``/``generate_until`` loops to hand over all their requests at once,
  and this engine batches them by tokens.
- ``_model_generate``: greedy decoding with the shared prompt prefix prefilled once
  (``generation.py``); anything else goes to stock ``generate``.
The top-level ``loglikelihood``/``loglikelihood_rolling``/``generate_until`` stay stock (the
request cache mixin wraps those).
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter, deque
from typing import Any

import torch

from lm_eval_ext.hf import probe
from lm_eval_ext.hf.batching import (
    DEFAULT_ROW_TOKENS, Batch, GenerationRequest, ScoreRequest, lowered_budget, pack_batches,
    pack_generation, pack_rows, split_batch,
)
from lm_eval_ext.hf.generation import eos_token_ids, greedy_generate, is_plain_greedy
from lm_eval_ext.hf.progress import CallProgress
from lm_eval_ext.hf.prompt_lookup import DEFAULT_DRAFT_TOKENS
from lm_eval_ext.hf.cost_report import CostReport
from lm_eval_ext.hf.scoring import ModelParts, score_batch, split_model

logger = logging.getLogger("lm_eval_ext.hf.engine")

#: What ``_detect_batch_size`` returns: "give me every request in one call".
WHOLE_CALL = 1 << 30


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def device_peaks_bytes() -> dict[str, int]:
    """Peak memory per device since the last reset: CUDA allocator peaks, process peak RSS."""
    import resource

    peaks = {"cpu_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            peaks[f"cuda:{i}"] = int(torch.cuda.max_memory_allocated(i))
    return peaks


#: what a rank with no requests offers when ranks agree on a budget (the minimum wins)
_NO_LIMIT_TOKENS = 2**62


class ScoringEngineMixin:
    """Mixed in before HFLM; call :meth:`_init_scoring_engine` after HFLM's constructor."""

    def _init_scoring_engine(self, *, max_batch_tokens: int | str | None, share_contexts: bool = True,
                             row_tokens: int = DEFAULT_ROW_TOKENS, probe_cache: Any = None,
                             prompt_lookup_num_tokens: int = DEFAULT_DRAFT_TOKENS) -> None:
        self._engine_max_batch_tokens = max_batch_tokens
        self._engine_draft_tokens = prompt_lookup_num_tokens
        self._engine_share = share_contexts
        self._engine_row_tokens = row_tokens
        self._engine_probe_cache = probe_cache if probe_cache is not None else probe.ProbeCache()
        self._engine_budgets: dict[str, int] = {}
        self._engine_oom_budgets: dict[str, int] = {}
        self._engine_parts_cache: ModelParts | None = None
        self._engine_tasks: dict[str, Counter] = {}
        self._engine_task_of: dict[Any, str] = {}
        self.cost_report = CostReport()
        if max_batch_tokens is not None and isinstance(self.batch_size, int) and self.batch_size != 1:
            logger.warning("max_batch_tokens=%s decides batch sizes; batch_size=%s is not used",
                           max_batch_tokens, self.batch_size)

    # ---- what the caller asked for -------------------------------------------------------
    @property
    def _engine_parts(self) -> ModelParts:
        if self._engine_parts_cache is None or self._engine_parts_cache.model is not self.model:
            self._engine_parts_cache = split_model(self.model)
        return self._engine_parts_cache

    def _engine_limits(self, kind: str, stats: dict) -> tuple[int | None, int | None]:
        """(max_batch_tokens, max_batch_requests) for this call."""
        budget_arg = self._engine_max_batch_tokens
        if budget_arg is None and str(self.batch_size).startswith("auto"):
            budget_arg = "auto"
        cap, budget = None, None
        if budget_arg is None:
            cap = int(self.batch_size)
        elif budget_arg != "auto":
            budget = int(budget_arg)
        else:
            if kind not in self._engine_budgets:
                self._engine_budgets[kind] = self._engine_find_budget(kind, stats)
            budget = self._engine_budgets[kind]
        lowered = self._engine_oom_budgets.get(kind)  # an OOM earlier in this run
        if lowered is not None:
            budget = lowered if budget is None else min(budget, lowered)
        return budget, cap

    def note_request_tasks(self, request_type: str, instances: list) -> None:
        """Remember which task each request belongs to, for the cost report (called by the
        adapter's top-level methods; optional)."""
        self._engine_current_kind = request_type
        self._engine_tasks[request_type] = Counter(i.task_name for i in instances)
        if request_type == "loglikelihood":
            self._engine_task_of = {tuple(i.args): i.task_name for i in instances}

    def _engine_task_label(self, request_type: str) -> str:
        tasks = sorted(t for t in self._engine_tasks.get(request_type, {}) if t)
        return "+".join(tasks) if tasks else "unknown"

    # ---- budget --------------------------------------------------------------------------
    def _engine_budget_is_auto(self) -> bool:
        budget_arg = self._engine_max_batch_tokens
        return budget_arg == "auto" or (budget_arg is None and str(self.batch_size).startswith("auto"))

    def _engine_agreement_pending(self, kind: str) -> bool:
        """Under data parallel the first auto-budget call of a kind gathers every rank's budget
        (:func:`probe.agree_min`), so a rank with nothing to compute (all cached) must take part."""
        return self.world_size > 1 and self._engine_budget_is_auto() and kind not in self._engine_budgets

    def _engine_join_agreement(self, kind: str | None) -> None:
        """The empty-handed side of the agreement: offer no limit, keep the others' minimum."""
        if kind is not None and self._engine_agreement_pending(kind):
            self._engine_budgets[kind] = probe.agree_min(getattr(self, "accelerator", None), _NO_LIMIT_TOKENS)

    def _engine_probe_key(self, kind: str) -> probe.ProbeKey:
        device = torch.device(self.device)
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            name, memory = props.name, int(props.total_memory)
        else:
            import psutil

            name, memory = "cpu", int(psutil.virtual_memory().total)
        return probe.ProbeKey(
            model=f"{self.pretrained}@{self.revision}", dtype=str(self.model.dtype), device=name,
            device_memory_bytes=memory, strategy=getattr(self, "strategy", "single"), request_kind=kind,
        )

    def _engine_find_budget(self, kind: str, stats: dict) -> int:
        key = self._engine_probe_key(kind)
        cached = self._engine_probe_cache.get(key)
        if cached is not None:
            budget = cached
        elif torch.device(self.device).type == "cuda":
            budget = self._engine_probe_gpu(kind, stats)
            self._engine_probe_cache.put(key, budget)
        else:
            budget = self._engine_cpu_budget(kind, stats)
        budget = probe.agree_min(getattr(self, "accelerator", None), budget)
        logger.info("max_batch_tokens=auto: %d tokens per %s batch", budget, kind)
        return budget

    def _engine_shape(self) -> probe.ModelShape:
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        heads = getattr(cfg, "num_attention_heads", 1)
        hidden = cfg.hidden_size
        return probe.ModelShape(
            hidden_size=hidden,
            intermediate_size=getattr(cfg, "intermediate_size", 4 * hidden),
            num_layers=cfg.num_hidden_layers,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or hidden // heads,
            vocab_size=cfg.vocab_size,
            dtype_bytes=self.model.dtype.itemsize,
        )

    def _engine_cpu_budget(self, kind: str, stats: dict) -> int:
        import psutil

        token_bytes = probe.per_token_bytes(
            self._engine_shape(), kind=kind, scored_fraction=stats.get("scored_fraction", 1.0),
            row_tokens=stats.get("row_tokens", self._engine_row_tokens),
        )
        return probe.cpu_budget_tokens(psutil.virtual_memory().available, token_bytes, kind)

    def _engine_probe_gpu(self, kind: str, stats: dict) -> int:
        """Grow-then-bisect with batches of the real rows (loglikelihood) or of the real widest
        prompt + max_gen_toks (generation: a prefill of that width holds the final KV cache)."""
        rows = stats.get("rows") or []
        width = stats.get("width_tokens") or (max((len(r) for r in rows), default=self.max_length))

        def fits(budget_tokens: int) -> bool:
            count = max(1, budget_tokens // max(1, width))
            try:
                if rows:
                    chosen = [rows[i % len(rows)] for i in range(count)]
                    self._engine_score(Batch(chosen))
                else:
                    ids = torch.ones((count, width), dtype=torch.long, device=self.device)
                    with torch.no_grad():
                        self.model(ids, use_cache=True, logits_to_keep=1)
                return True
            except Exception as exc:  # noqa: BLE001 (only OOMs are answers; others re-raise)
                if not is_out_of_memory(exc):
                    raise
                return False
            finally:
                free_memory()

        max_tokens = max(width, int(self.max_batch_size) * width)
        return probe.search_budget(fits, start_tokens=width, max_tokens=max_tokens)

    # ---- loglikelihood ---------------------------------------------------------------------
    def _detect_batch_size(self, requests=None, pos: int = 0):
        return WHOLE_CALL

    def _engine_score(self, batch: Batch) -> dict[int, tuple[float, bool]]:
        """One forward; the single place batches meet the model (tests inject faults here)."""
        return score_batch(
            self._engine_parts, batch, device=self.device, softmax_dtype=self.softmax_dtype,
            autocast_dtype=self.mixed_precision_dtype,
        )

    def _engine_requests(self, requests) -> list[ScoreRequest]:
        out = []
        for index, (_, context_enc, continuation_enc) in enumerate(requests):
            if not context_enc or not continuation_enc or len(continuation_enc) > self.max_length:
                raise ValueError(f"request {index}: empty context/continuation or continuation "
                                 f"longer than max_length={self.max_length}")
            whole = (context_enc + continuation_enc)[-(self.max_length + 1):][:-1]
            if len(context_enc) + len(continuation_enc) > self.max_length + 1:
                logger.warning("request %d: %d tokens exceed max_length=%d; truncating on the left",
                               index, len(context_enc) + len(continuation_enc), self.max_length)
            out.append(ScoreRequest(index, tuple(whole), tuple(continuation_enc)))
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        if not requests:
            self._engine_join_agreement(getattr(self, "_engine_current_kind", None))
        if self.backend != "causal" or not requests:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        # stock loglikelihood_rolling sends windows with request key None
        kind = "loglikelihood_rolling" if requests[0][0] is None else "loglikelihood"
        score_requests = self._engine_requests(requests)
        share = self._engine_share and self._engine_parts.supports_tree_mask
        rows = pack_rows(score_requests, row_tokens=self._engine_row_tokens, share=share)
        scored = sum(len(r.continuation_tokens) for r in score_requests)
        stats = {"rows": rows, "scored_fraction": scored / max(1, sum(len(r) for r in rows)),
                 "row_tokens": max(len(r) for r in rows)}
        budget, cap = self._engine_limits(kind, stats)
        if override_bs and budget is None:
            cap = min(cap or override_bs, override_bs)
        return self._engine_run(kind, rows, budget, cap, share, requests, disable_tqdm)

    def _engine_run(self, kind, rows, budget, cap, share, requests, disable_tqdm) -> list:
        queue = deque(pack_batches(rows, max_batch_tokens=budget, max_batch_requests=cap))
        results: dict[int, tuple[float, bool]] = {}
        progress = CallProgress(kind, len(requests), disable=disable_tqdm or self.rank != 0)
        ooms = 0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        while queue:
            batch = queue.popleft()
            start_s = time.perf_counter()
            try:
                out = self._engine_score(batch)
            except Exception as exc:  # noqa: BLE001 (only OOMs are handled; others re-raise)
                if not is_out_of_memory(exc):
                    raise
                ooms += 1
                budget, queue = self._engine_after_oom(kind, batch, queue, budget, cap, share, exc)
                continue
            results.update(out)
            if kind == "loglikelihood":  # written as each batch finishes: a killed run keeps them
                for index, answer in out.items():
                    self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
            self._engine_account(kind, batch, requests, time.perf_counter() - start_s)
            progress.update(batch.num_requests, batch.computed_tokens)
        progress.close()
        tasks = sorted(self._engine_tasks.get(kind, {})) or ["unknown"]
        self.cost_report.finish_call(kind, tasks if kind == "loglikelihood" else [self._engine_task_label(kind)],
                                     budget_tokens=budget, oom_retries=ooms, peak_memory_bytes=device_peaks_bytes())
        return [results[i] for i in range(len(requests))]

    def _engine_after_oom(self, kind, batch, queue, budget, cap, share, exc):
        """Split the failed batch, lower the budget for the rest of the run, re-pack the rest."""
        parts = split_batch(batch, row_tokens=self._engine_row_tokens, share=share)
        if not parts:
            raise exc  # one request alone does not fit: nothing left to split
        free_memory()
        new_budget = lowered_budget(budget or batch.padded_tokens, batch.padded_tokens)
        self._engine_oom_budgets[kind] = new_budget
        logger.warning("out of memory at %d padded tokens (%d requests); split and retried, "
                       "budget now %d tokens", batch.padded_tokens, batch.num_requests, new_budget)
        rest = [row for b in queue for row in b.rows]
        repacked = pack_batches(rest, max_batch_tokens=new_budget, max_batch_requests=cap)
        return new_budget, deque(parts + repacked)

    def _engine_account(self, kind: str, batch: Batch, requests, wall_s: float) -> None:
        useful, counts = Counter(), Counter()
        label = self._engine_task_label(kind)
        for request in batch.requests():
            task = label
            if kind == "loglikelihood":
                task = self._engine_task_of.get(tuple(requests[request.index][0]), label)
            useful[task] += request.useful_tokens
            counts[task] += 1
        self.cost_report.add_batch(kind, useful, wall_s=wall_s, computed_tokens=batch.computed_tokens,
                                   padded_tokens=batch.padded_tokens, requests_by_task=counts)

    # ---- generation ------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False):
        if not requests:  # HFLM would return at once; under data parallel, join the agreement
            self._engine_join_agreement("generate_until")
            return []
        return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        attention_mask = generation_kwargs.get("attention_mask")
        options = {k: v for k, v in generation_kwargs.items() if k != "attention_mask"}
        if (self.backend != "causal" or attention_mask is None or not self._engine_parts.split
                or not is_plain_greedy(self.model.generation_config, options)):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        width = context.shape[1]
        max_new = max_length - width
        prompts = [row[m.bool()].tolist() for row, m in zip(context.cpu(), attention_mask.cpu(), strict=True)]
        requests = [GenerationRequest(i, tuple(p)) for i, p in enumerate(prompts)]
        stats = {"width_tokens": max(len(p) for p in prompts) + max_new,
                 "scored_fraction": 1.0 / (max(len(p) for p in prompts) + max_new)}
        budget, cap = self._engine_limits("generate_until", stats)
        queue = deque(pack_generation(requests, max_gen_tokens=max_new, max_batch_tokens=budget,
                                      max_batch_requests=cap))
        out = torch.full((len(prompts), width + max_new), self.tokenizer.pad_token_id, dtype=torch.long)
        out[:, :width] = context.cpu()
        progress = CallProgress("generate_until", len(prompts), disable=self.rank != 0)
        ooms = 0
        while queue:
            batch = queue.popleft()
            start_s = time.perf_counter()
            try:
                generated, cost = self._engine_generate(batch, max_new, stop)
            except Exception as exc:  # noqa: BLE001 (only OOMs are handled; others re-raise)
                if not is_out_of_memory(exc) or len(batch) == 1:
                    raise
                ooms += 1
                free_memory()
                half = len(batch) // 2
                queue.extendleft([batch[half:], batch[:half]])
                width_tokens = max(len(r.prompt_tokens) for r in batch) + max_new
                self._engine_oom_budgets["generate_until"] = lowered_budget(
                    budget or len(batch) * width_tokens, len(batch) * width_tokens)
                logger.warning("out of memory generating %d requests; split and retried", len(batch))
                continue
            for request, tokens in zip(batch, generated, strict=True):
                out[request.index, width : width + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            label = self._engine_task_label("generate_until")
            self.cost_report.add_batch("generate_until", {label: cost.useful_tokens},
                                       wall_s=time.perf_counter() - start_s, computed_tokens=cost.computed_tokens,
                                       padded_tokens=cost.computed_tokens, requests_by_task={label: len(batch)})
            progress.update(len(batch), cost.computed_tokens)
        progress.close()
        self.cost_report.finish_call("generate_until", [self._engine_task_label("generate_until")],
                                     budget_tokens=budget, oom_retries=ooms, peak_memory_bytes=device_peaks_bytes())
        return out.to(context.device)

    def _engine_generate(self, batch, max_new: int, stop):
        """One generation batch; the single place generation meets the model (fault injection)."""
        with torch.autocast(device_type=torch.device(self.device).type, dtype=self.mixed_precision_dtype,
                            enabled=self.mixed_precision_dtype is not None):
            return greedy_generate(
                self._engine_parts, [r.prompt_tokens for r in batch], max_new_tokens=max_new,
                eos_ids=eos_token_ids(self.model.generation_config), stop_strings=stop,
                decode=self.tok_decode, device=self.device, draft_tokens=self._engine_draft_tokens,
            )

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["cost_report"] = self.cost_report.as_dict()
        self.cost_report.log()
        return info
