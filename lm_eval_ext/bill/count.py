"""EDGE: a recorded workload (:mod:`lm_eval_ext.bill.workload`) in one backend's tokens.

The backend's own lm-eval model is built without weights (``hf_ext``: weights deferred behind the
request cache; ``vllm_ext``: no engine started), so every request is tokenised by the code a run
uses (``backend/lm_requests.py``, ``hf/requests.py``, ``vllm/generation.py``: stock's encoding,
truncation, rolling windows, generation settings) and counted by the backend's policy
(:mod:`lm_eval_ext.hf.policy.token_count`, :mod:`lm_eval_ext.vllm.token_count`). The same model
gives the request cache's fingerprint (the history's key) and the entries the cache already holds;
only the misses are counted as work, as a run computes only those.

A generation's length is unknown before the run: the central guess is the reference answer lm-eval
logs (``target``) followed by the task's first stop sequence, tokenised, unless the history knows
this model's mean length on the task.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lm_eval_ext.errors import UserError
from lm_eval_ext.bill.workload import Workload
from lm_eval_ext.backend.work import TokenCount
from lm_eval_ext.plan.hardware import Hardware, describe_hardware
from lm_eval_ext.vllm.token_count import documents_as_requests, scoring_settings

logger = logging.getLogger(__name__)

#: model_args that decide the layout, not the tokens: the counting model is built on this CPU as one process
_LAYOUT_KEYS = ("strategy", "parallelize", "device", "max_memory_per_gpu", "max_cpu_memory", "offload_folder",
                "tensor_parallel_size", "data_parallel_size", "pipeline_parallel_size", "gpu_memory_utilization")


@dataclass
class CountedWork:
    """Per ``(task, request type)``: the work a run would compute, and what the cache already answers."""

    counts: dict[tuple[str, str], TokenCount]
    cache_hits: dict[tuple[str, str], int] = field(default_factory=dict)
    num_documents: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    """request type -> what the backend's engine would be handed (``bill/measure.py`` times it)"""


class WorkCounter:
    """The backend's lm-eval model without weights (``backend``: ``hf`` or ``vllm``), and what it counts."""

    def __init__(self, backend: str, model_args: Mapping[str, str], *, dtype: str | None = None,
                 hardware: Hardware | None = None) -> None:
        self.backend = backend
        self.lm = _counting_model(backend, model_args, dtype, hardware or counting_cpu())
        self.reads = str(model_args.get("cache", "readwrite")) in ("read", "readwrite")

    @property
    def fingerprint(self) -> str | None:
        """The request cache's fingerprint of the model: the history's model key."""
        return _fingerprint(self.lm)

    def count(self, workload: Workload, generated_per_request: Mapping[str, float] | None = None) -> CountedWork:
        """``generated_per_request``: task -> mean tokens generated (the history's), replacing the
        reference-answer guess for those tasks."""
        counted = CountedWork({}, num_documents={t: workload.num_documents(t) for t in workload.tasks})
        for request_type, instances in workload.calls.items():
            misses, hits = _split_cached(self.lm, request_type, instances) if self.reads else (list(instances), {})
            for task, num_hits in hits.items():
                counted.cache_hits[(task, request_type)] = num_hits
            counter = _COUNTERS[(self.backend, request_type)]
            counts, counted.inputs[request_type] = counter(self.lm, misses, workload, generated_per_request or {})
            for task, count in counts.items():
                counted.counts[(task, request_type)] = count
            for task in {r.task_name for r in instances} - {r.task_name for r in misses}:
                counted.counts[(task, request_type)] = TokenCount()  # all cached: nothing to compute
        return counted


def count_work(backend: str, model_args: Mapping[str, str], workload: Workload, *,
               generated_per_request: Mapping[str, float] | None = None) -> CountedWork:
    """One-shot :class:`WorkCounter` (tests)."""
    return WorkCounter(backend, model_args).count(workload, generated_per_request)


def _counting_model(backend: str, model_args: Mapping[str, str], dtype: str | None, hardware: Hardware) -> Any:
    """The backend's lm-eval model, its tokenizer loaded, no weights and no engine: ``hf_ext`` planned
    on a described CPU (tokenisation does not depend on the layout), ``vllm_ext`` on the plan's
    machine (its context length does). ``dtype``: the plan's, so the fingerprint is the run's."""
    _require_tokenizer(model_args)
    args = {k: v for k, v in model_args.items() if k not in _LAYOUT_KEYS}
    args["cache"] = "read"  # deferred weights (hf) / no engine (vllm); lookups only, nothing written
    if dtype is not None and str(args.get("dtype", "auto")) == "auto":
        args["dtype"] = dtype
    if backend == "vllm":
        from lm_eval_ext.vllm.adapter import VllmExtLM
        from lm_eval_ext.vllm.config import VllmExtConfig

        known = {f.name for f in dataclasses.fields(VllmExtConfig)}
        counting = type("CountingVllmExtLM", (VllmExtLM,), {"plan_hardware": hardware})
        return counting(**{k: v for k, v in args.items() if k in known})
    from lm_eval_ext.hf.adapter import HfExtLM
    from lm_eval_ext.hf.config import HfExtConfig

    known = {f.name for f in dataclasses.fields(HfExtConfig)}
    counting = type("CountingHfExtLM", (HfExtLM,), {"plan_hardware": counting_cpu()})
    return counting(**{k: v for k, v in args.items() if k in known}, device="cpu", strategy="single")


def counting_cpu() -> Hardware:
    """This CPU with room for any model: the counting model's layout always fits, and the threads
    it sets when ``OMP_NUM_THREADS`` is unset are this machine's (as a run's), so ``--measure`` times
    what a run would."""
    from lm_eval_ext.plan.detect import num_cpu_cores

    return describe_hardware("", cpu_ram_bytes=2**50, num_cpu_cores=num_cpu_cores())


def _require_tokenizer(model_args: Mapping[str, str]) -> None:
    """One line when the tokenizer does not load (a bare config, a model without tokenizer files)."""
    from transformers import AutoTokenizer

    source = model_args.get("tokenizer") or model_args["pretrained"]
    trust = str(model_args.get("trust_remote_code", "false")).lower() in ("true", "1", "yes")
    try:
        AutoTokenizer.from_pretrained(source, revision=model_args.get("revision") or "main",
                                      subfolder=model_args.get("subfolder", "") if not model_args.get("tokenizer")
                                      else "", trust_remote_code=trust)
    except Exception as exc:  # noqa: BLE001 (transformers raises OSError, ValueError, TypeError... here)
        raise UserError(f"pretrained={model_args['pretrained']} has no tokenizer that loads ({type(exc).__name__}); "
                        "counting tokens needs one: pass tokenizer=PATH_OR_ID in --model_args, or leave --tasks out "
                        "for the layout alone") from None


def _fingerprint(lm: Any) -> str | None:
    from lm_eval_ext.cache.fingerprint import fingerprint

    try:
        return fingerprint(lm.request_cache.identity())
    except Exception as exc:  # noqa: BLE001 (a model without a checkable identity has no history)
        logger.warning("no model fingerprint (%s): the run history cannot be used", exc)
        return None


def _split_cached(lm: Any, request_type: str, instances: list) -> tuple[list, dict[str, int]]:
    from lm_eval_ext.cache.request_cache import MISSING

    cache = lm.request_cache
    if not (cache.dir / "requests.sqlite").exists():
        return list(instances), {}
    values = cache.lookup(request_type, instances)
    hits: dict[str, int] = defaultdict(int)
    misses = []
    for instance, value in zip(instances, values):
        if value is MISSING:
            misses.append(instance)
        else:
            hits[instance.task_name] += 1
    return misses, dict(hits)


# ---- hf_ext ----------------------------------------------------------------------------------

def _hf_flags(lm: Any) -> tuple[bool, bool]:
    """(prefix-tree rows, few-shot families) as ``ScoringEngine.sharing`` will find them once the
    model is loaded, read from its config: rows need an attention that takes 4D masks (the
    implementation transformers picks for a causal LM unless told: sdpa), families also a split
    decoder and a cache of plain layers."""
    from lm_eval_ext.hf.compute.kv_cache import growing_cache
    from lm_eval_ext.hf.compute.scoring import _LOGIT_POSTPROCESSING

    impl = lm.ext_config.attn_implementation or "sdpa"
    share = lm.ext_config.share_contexts and impl in ("eager", "sdpa")
    config = lm._config
    plain_logits = all(getattr(config, name, None) in (None, 1, 1.0) for name in _LOGIT_POSTPROCESSING)
    return share, share and plain_logits and growing_cache(config) is not None


def _hf_layout(lm: Any, requests: list) -> list:
    from lm_eval_ext.hf.policy.token_count import scoring_layout

    share, families = _hf_flags(lm)
    return scoring_layout(requests, share=share, families=families, row_tokens=lm.engine.settings.row_tokens)


def _hf_loglikelihood(lm: Any, instances: list, workload: Workload, generated: Mapping) -> tuple:
    from lm_eval_ext.backend.lm_requests import encode_pairs
    from lm_eval_ext.hf.policy.batching import score_request
    from lm_eval_ext.hf.policy.token_count import count_scoring

    pairs = encode_pairs(lm, instances)
    requests = [score_request(i, ctx, cont, lm.max_length) for i, (ctx, cont) in enumerate(pairs)]
    tasks = [r.task_name for r in instances]
    return count_scoring(requests, tasks, _hf_layout(lm, requests)), (requests, tasks)


def _hf_rolling(lm: Any, instances: list, workload: Workload, generated: Mapping) -> tuple:
    from lm_eval_ext.backend.lm_requests import RollingDocuments, rolling_windows
    from lm_eval_ext.hf.policy.batching import score_request
    from lm_eval_ext.hf.policy.token_count import count_scoring

    documents = RollingDocuments([rolling_windows(lm, i.args[0], lm.max_length) for i in instances],
                                 on_total=lambda doc, total: None)
    requests = [score_request(i, ctx, cont, lm.max_length) for i, (ctx, cont) in enumerate(documents.windows)]
    tasks = [instances[d].task_name for d in documents.owner]
    counts = count_scoring(requests, tasks, _hf_layout(lm, requests))
    return documents_as_requests(counts, instances), (requests, tasks)


def _hf_generation(lm: Any, instances: list, workload: Workload, generated: Mapping) -> tuple:
    from lm_eval_ext.hf.policy.token_count import count_generation
    from lm_eval_ext.hf.requests import prepare_generation

    eos = lm.tok_decode(lm.eot_token_id, skip_special_tokens=False)
    prepared = [prepare_generation(lm, i.args[0], i.args[1], eos) for i in instances]
    lengths = [_central_length(lm.tok_encode, instance, g.until, workload, generated)
               for instance, g in zip(instances, prepared)]
    prompts, budgets, tasks = [g.prompt for g in prepared], [g.max_new_tokens for g in prepared], \
        [i.task_name for i in instances]
    stops = [tuple(g.until) for g in prepared]
    return count_generation(prompts, budgets, tasks, lengths), (prompts, budgets, tasks, lengths, stops)


def _central_length(encode, instance: Any, until: list[str], workload: Workload, generated: Mapping) -> float:
    if instance.task_name in generated:
        return float(generated[instance.task_name])
    target = workload.targets.get((instance.task_name, instance.doc_id))
    if target is None:
        return float("inf")  # no reference: the budget (clipped by the counter)
    stop = f"\n\n{until[0]}" if until else ""
    return float(len(encode(target + stop)))


# ---- vllm_ext --------------------------------------------------------------------------------

def _vllm_loglikelihood(lm: Any, instances: list, workload: Workload, generated: Mapping) -> tuple:
    from lm_eval_ext.backend.lm_requests import encode_pairs
    from lm_eval_ext.vllm.token_count import count_vllm_scoring

    pairs = encode_pairs(lm, instances)
    return count_vllm_scoring(pairs, [i.task_name for i in instances], max_length=lm.max_length,
                              **scoring_settings(lm)), None


def _vllm_rolling(lm: Any, instances: list, workload: Workload, generated: Mapping) -> tuple:
    from lm_eval_ext.backend.lm_requests import rolling_windows
    from lm_eval_ext.vllm.token_count import count_vllm_scoring

    windows, tasks = [], []
    for instance in instances:
        for window in rolling_windows(lm, instance.args[0], lm.max_length - 2):
            windows.append(window)
            tasks.append(instance.task_name)
    counts = count_vllm_scoring(windows, tasks, max_length=lm.max_length, **scoring_settings(lm))
    return documents_as_requests(counts, instances), None


def _vllm_generation(lm: Any, instances: list, workload: Workload, generated: Mapping) -> tuple:
    from lm_eval_ext.vllm.generation import end_of_text, prepare_generation
    from lm_eval_ext.vllm.token_count import count_vllm_generation

    contexts = [i.args[0] for i in instances]
    encodings = lm.tok_encode(contexts) if contexts else []
    eos = end_of_text(lm)
    prepared = [prepare_generation(lm, enc, i.args[1], eos) for enc, i in zip(encodings, instances)]
    lengths = [_central_length(lm.tok_encode, i, until, workload, generated) for i, (_, _, until) in
               zip(instances, prepared)]
    settings = scoring_settings(lm)
    return count_vllm_generation([p[0] for p in prepared], [p[1].max_tokens for p in prepared],
                                 [i.task_name for i in instances], lengths, block_size=settings["block_size"],
                                 prefix_caching=lm.ext_config.enable_prefix_caching), None


_COUNTERS = {
    ("hf", "loglikelihood"): _hf_loglikelihood, ("hf", "loglikelihood_rolling"): _hf_rolling,
    ("hf", "generate_until"): _hf_generation,
    ("vllm", "loglikelihood"): _vllm_loglikelihood, ("vllm", "loglikelihood_rolling"): _vllm_rolling,
    ("vllm", "generate_until"): _vllm_generation,
}
