"""EDGE (vLLM internals): prompt logprobs only where scoring reads them, every request of a step at once.

vLLM 0.32's V1 model runner computes prompt logprobs in ``GPUModelRunner._get_prompt_logprobs_dict``
one request at a time ("prioritize simple, maintainable loop over optimal performance"): for each
request, the LM head over every prompt position the step computed, a full-vocabulary log-softmax,
a top-k and a rank. Scoring a continuation reads only the positions from ``context_len - 1`` on. On
this CPU (SmolLM2-135M, float32) that loop was ~27 % of stock's scoring time, and for ``vllm_ext``,
whose choices compute only a few positions each, it cost as much as the forward pass: each call
streams the whole LM-head matrix (113 MB) for a handful of rows.

:func:`install` replaces that method on the model runner(s) of one engine (stock engines in the
same process keep vLLM's own) with :func:`prompt_logprobs_from`: the same bookkeeping (chunked
prefill, requests resumed after preemption, the output tensors vLLM's frontend reads), but rows
before ``SamplingParams.extra_args[SCORED_FROM]`` are skipped (neither computed nor returned: vLLM's
frontend would turn each into a Python dict), and the rows of all requests go through the LM head,
log-softmax and top-k together, :data:`CHUNK_ROWS` at a time. Rows past the cached tokens that a
request's start row does not reach stay NaN, as unread as the rows vLLM leaves unwritten for
cached positions. Same operations on the same hidden
states, so the values equal vLLM's loop up to the matrix multiply's summation order (tested against
stock ``vllm`` per sample).

vLLM's V2 model runner scores a start row natively (``prompt_logprob_start``), but only together
with ``prompt_logprob_token_ids`` (V2 only, GPU); :func:`install` leaves any runner it does not
recognise alone and says so, and scoring then works as before, computing more.
"""

from __future__ import annotations

import inspect
import logging
import types
from typing import Any

logger = logging.getLogger(__name__)

#: ``SamplingParams.extra_args`` key: the first position whose prompt logprob is read
SCORED_FROM = "lm_eval_ext_scored_from"
#: rows per LM-head call: bounds the logits tensor (rows x vocabulary floats) as vLLM's V2 runner does
CHUNK_ROWS = 1024
#: what :func:`prompt_logprobs_from` reads on the runner, besides the method it replaces
RUNNER_ATTRIBUTES = ("num_prompt_logprobs", "requests", "query_start_loc", "input_batch", "model", "sampler",
                     "model_config")


def scored_from(sampling_params: Any) -> int:
    extra = getattr(sampling_params, "extra_args", None) or {}
    return int(extra.get(SCORED_FROM, 0))


def prompt_logprobs_from(self: Any, hidden_states: Any, num_scheduled_tokens: dict[str, int]) -> dict[str, Any]:
    """``GPUModelRunner._get_prompt_logprobs_dict`` (vLLM 0.32) with a start row per request and
    every request's rows in one LM-head pass; bound to a runner by :func:`install`.

    A request with a start row ``s`` gets rows for positions ``s`` on only (the tensors vLLM's
    frontend turns into one dict per row are that much shorter: a 400-token few-shot context
    would cost 400 Python dicts per choice); :func:`aligned_prompt_logprobs` puts them back in place."""
    import torch
    from vllm.v1.outputs import LogprobsTensors

    wanted = self.num_prompt_logprobs
    if not wanted:
        return {}
    finished: dict[str, Any] = {}
    spans: dict[int, list[tuple[Any, int, int, int]]] = {}  # logprobs per row -> (tensors, first, end, row)
    targets: dict[int, list[int]] = {}
    for req_id, num_logprobs in wanted.items():
        num_tokens = num_scheduled_tokens.get(req_id)
        if num_tokens is None:  # preempted in prefill
            continue
        request = self.requests[req_id]
        if request.prompt_token_ids is None:  # prompt embeddings: no prompt logprobs (as vLLM's loop)
            continue
        prompt = request.prompt_token_ids
        skipped = min(scored_from(request.sampling_params), len(prompt) - 1)
        tensors = request.in_progress_prompt_logprobs_cpu
        if tensors is None:  # rows from the start row on; chunks of a long prefill are copied in step by step
            tensors = LogprobsTensors.empty_cpu(len(prompt) - 1 - skipped, num_logprobs + 1)
            tensors.logprob_token_ids.zero_()
            tensors.logprobs.fill_(float("nan"))
            tensors.selected_token_ranks.zero_()
            request.in_progress_prompt_logprobs_cpu = tensors
        start = request.num_computed_tokens
        remaining = len(prompt) - start - 1
        num_rows = num_tokens if num_tokens <= remaining else remaining
        if num_tokens > remaining:  # the prompt's last chunk (vLLM returns the rows with it)
            finished[req_id] = tensors
        first, end = max(start, skipped), start + num_rows
        if first < end:
            offset = int(self.query_start_loc.np[self.input_batch.req_id_to_index[req_id]])
            rows = (tensors, first - skipped, end - skipped, offset + first - start)
            spans.setdefault(num_logprobs, []).append(rows)
            targets.setdefault(num_logprobs, []).extend(prompt[first + 1:end + 1])
    for num_logprobs, group in spans.items():
        rows = torch.cat([torch.arange(row, row + end - first) for _, first, end, row in group])  # hidden-state rows
        target_ids = torch.tensor(targets[num_logprobs], dtype=torch.int64)
        token_ids, logprobs, ranks = _gather(self, hidden_states, rows, target_ids, num_logprobs)
        at = 0
        for tensors, first, end, _ in group:  # first, end: rows of the request's tensors
            count = end - first
            tensors.logprob_token_ids[first:end].copy_(token_ids[at:at + count], non_blocking=True)
            tensors.logprobs[first:end].copy_(logprobs[at:at + count], non_blocking=True)
            tensors.selected_token_ranks[first:end].copy_(ranks[at:at + count], non_blocking=True)
            at += count
    for req_id in finished:
        del wanted[req_id]
        self.requests[req_id].in_progress_prompt_logprobs_cpu = None
    if spans:
        self._sync_device()  # the non-blocking copies above must land before vLLM reads the tensors
    return finished


def _gather(runner: Any, hidden_states: Any, rows: Any, target_ids: Any, num_logprobs: int) -> tuple[Any, Any, Any]:
    """Top-k ids, logprobs and the target's rank at ``rows`` of ``hidden_states``, as vLLM's loop
    computes them per request (its logprobs mode honoured), :data:`CHUNK_ROWS` rows per pass."""
    import torch

    raw_logits = runner.model_config.logprobs_mode in ("raw_logits", "processed_logits")
    device = hidden_states.device
    parts: list[tuple[Any, Any, Any]] = []
    for at in range(0, len(rows), CHUNK_ROWS):
        logits = runner.model.compute_logits(hidden_states[rows[at:at + CHUNK_ROWS].to(device)])
        scores = logits.to(torch.float32) if raw_logits else runner.sampler.compute_logprobs(logits)
        token_ids, logprobs, ranks, *_ = runner.sampler.gather_logprobs(
            scores, num_logprobs, target_ids[at:at + CHUNK_ROWS].to(device, non_blocking=True))
        parts.append((token_ids, logprobs, ranks))
    return tuple(torch.cat(column) for column in zip(*parts))  # type: ignore[return-value]


def aligned_prompt_logprobs(prompt_logprobs: list, num_prompt_tokens: int) -> list:
    """vLLM's per-position list (``None`` first, then one entry per row it was given) with the rows
    :func:`prompt_logprobs_from` skipped put back as None: index ``j`` holds prompt token ``j``'s."""
    skipped = num_prompt_tokens - len(prompt_logprobs)
    return prompt_logprobs if skipped <= 0 else [None] * (skipped + 1) + list(prompt_logprobs[1:])


def runner_compatible(runner: Any) -> bool:
    """Whether ``runner`` is the V1 runner :func:`prompt_logprobs_from` was written against."""
    method = getattr(runner, "_get_prompt_logprobs_dict", None)
    if method is None or not all(hasattr(runner, name) for name in RUNNER_ATTRIBUTES):
        return False
    return list(inspect.signature(method).parameters) == ["hidden_states", "num_scheduled_tokens"]


def install_on_worker(worker: Any) -> bool:
    """Run on each vLLM worker (``LLM.collective_rpc``): bind :func:`prompt_logprobs_from` to its runner."""
    runner = getattr(worker, "model_runner", None)
    if runner is None or not runner_compatible(runner):
        return False
    runner._get_prompt_logprobs_dict = types.MethodType(prompt_logprobs_from, runner)
    return True


def install(llm: Any) -> bool:
    """Install :func:`prompt_logprobs_from` on every worker of ``llm``; False (and a log line) where
    some runner is not the one it was written for: those compute prompt logprobs vLLM's way."""
    try:
        installed = llm.collective_rpc(install_on_worker)
    except Exception as exc:  # noqa: BLE001  (an engine without the hook keeps vLLM's loop)
        logger.warning("vllm_ext: prompt logprobs stay vLLM's own (could not reach the model runner: %s)", exc)
        return False
    if installed and all(installed):
        logger.info("vllm_ext: prompt logprobs computed only from each continuation's first position, "
                    "all requests of a step at once")
        return True
    logger.warning("vllm_ext: this vLLM's model runner is not the V1 runner vllm_ext patches; prompt logprobs "
                   "are computed at every position (scoring is slower, results are the same)")
    return False
