"""Every upstream name beyond a package's top-level API that lm-eval-ext touches, and every version shim.

:data:`UPSTREAM` is the inventory: each private hook, private attribute and submodule import of
lm-eval, transformers, vLLM and accelerate used anywhere in the package, private names reached
through ``getattr``/``hasattr`` strings, and the upstream internals read by attribute on upstream
objects (vLLM's engine and outputs, accelerate's hooks), why, and the upstream version that lets it
go (``open``: no release offers a public way yet). ``tests/unit/test_compat_contract.py`` finds such
uses in the source by itself and fails on any that is not listed here, checks that each listed name
still exists upstream, and that each listed attribute is still used. The version shims are the
functions below.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import NamedTuple


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"lm-eval-ext needs '{module}' for this model; install it with "
            f"pip install 'lm-eval-ext[{extra}]' ({exc})"
        ) from exc


def hflm_accelerator(lm):
    """HFLM (lm-eval 0.4.13) sets ``self.accelerator`` only when it runs under several processes
    and tests for it with ``hasattr``; this is the one place that reads it (None: single process)."""
    return getattr(lm, "accelerator", None)


class UpstreamName(NamedTuple):
    """One upstream name beyond a package's top-level public API that lm-eval-ext relies on."""

    target: str
    """``module:Name`` or ``module:Class.attribute``."""
    why: str
    until: str
    """The upstream version that lets it go, or ``open`` when no upstream release offers a public way."""

    @property
    def module(self) -> str:
        return self.target.split(":")[0]

    @property
    def name(self) -> str:
        return self.target.split(":")[1]


_HFLM = "lm_eval.models.huggingface:HFLM"
_VLLM = "lm_eval.models.vllm_causallms:VLLM"
_OPEN_HOOK = "open (lm-eval 0.4.13 has no public hook for it)"
_OPEN_VLLM = "open (vLLM 0.32 documents no public way)"
_LLM_ENGINE = "vllm.v1.engine.llm_engine:LLMEngine"
_RUNNER = "vllm.v1.worker.gpu_model_runner:GPUModelRunner"
_REQUEST_STATE = "vllm.v1.worker.gpu_input_batch:CachedRequestState"
_OPEN_RUNNER = "open (vLLM 0.32: prompt_logprob_start is honoured by the V2 runner only, with prompt_logprob_token_ids)"

UPSTREAM: tuple[UpstreamName, ...] = (
    # lm-eval: what the adapters subclass and the narrow hooks they override
    UpstreamName(_HFLM, "hf_ext subclasses stock HFLM (tokenisation, truncation, chat templates stay stock)", _OPEN_HOOK),
    UpstreamName(f"{_HFLM}._create_model", "deferred weights: the request cache loads them on the first miss", _OPEN_HOOK),
    UpstreamName(f"{_HFLM}._model_generate", "stock generation for options the engine does not handle", _OPEN_HOOK),
    UpstreamName("lm_eval.api.model:TemplateLM._encode_pair", "loglikelihood pairs encoded exactly as stock", _OPEN_HOOK),
    UpstreamName(f"{_HFLM}._get_accelerate_args", "the planned device_map and max_memory", _OPEN_HOOK),
    UpstreamName(f"{_HFLM}._model", "the placeholder of deferred weights lives where HFLM keeps the model", _OPEN_HOOK),
    UpstreamName(f"{_HFLM}._config", "model identity and max_length without weights", _OPEN_HOOK),
    UpstreamName(f"{_HFLM}._max_length", "max_length answered from the config while weights are deferred", _OPEN_HOOK),
    UpstreamName(f"{_HFLM}._DEFAULT_MAX_LENGTH", "the same fallback as stock", _OPEN_HOOK),
    UpstreamName(f"{_HFLM}._rank", "global rank under data parallel (stock uses the node-local one)", _OPEN_HOOK),
    UpstreamName(f"{_HFLM}._world_size", "every process of the launch, GPUs or not", _OPEN_HOOK),
    UpstreamName(_VLLM, "vllm_ext reuses stock's request parsing and truncation", _OPEN_HOOK),
    UpstreamName(f"{_VLLM}._loglikelihood_tokens", "scoring through vllm_ext's engines", _OPEN_HOOK),
    UpstreamName(f"{_VLLM}._model_generate", "generation through vllm_ext's engines", _OPEN_HOOK),
    UpstreamName(f"{_VLLM}._parse_logprobs", "stock's reading of prompt logprobs, for equal results", _OPEN_HOOK),
    UpstreamName(f"{_VLLM}._rank", "one lm_eval process per node: lm-eval shards documents by it", _OPEN_HOOK),
    UpstreamName(f"{_VLLM}._world_size", "one lm_eval process per node: every node's process", _OPEN_HOOK),
    UpstreamName(f"{_VLLM}._config", "stock attributes set without stock's engine", _OPEN_HOOK),
    UpstreamName(f"{_VLLM}._max_length", "stock attributes set without stock's engine", _OPEN_HOOK),
    UpstreamName(f"{_VLLM}._max_gen_toks", "stock attributes set without stock's engine", _OPEN_HOOK),
    UpstreamName("lm_eval.models.vllm_causallms:SamplingParams", "the SamplingParams stock builds requests with", _OPEN_HOOK),
    UpstreamName("lm_eval.models.vllm_causallms:get_tokenizer", "the tokenizer stock vllm uses", _OPEN_HOOK),
    UpstreamName("lm_eval.models.utils:resolve_max_length", "stock's max_length rule", _OPEN_HOOK),
    UpstreamName("lm_eval.models.utils:configure_pad_token", "stock's pad-token rule", _OPEN_HOOK),
    UpstreamName("lm_eval.models.utils:maybe_truncate", "stock's prompt truncation for generation", _OPEN_HOOK),
    UpstreamName("lm_eval.models.utils:postprocess_generated_text", "stock's stop-sequence handling", _OPEN_HOOK),
    UpstreamName("lm_eval.models.utils:normalize_gen_kwargs", "stock's reading of gen_kwargs", _OPEN_HOOK),
    UpstreamName("lm_eval.models.utils:handle_stop_sequences", "stock's stop sequences (EOS added)", _OPEN_HOOK),
    UpstreamName("lm_eval.utils:get_rolling_token_windows", "stock's rolling windows", "public helper; kept listed"),
    UpstreamName("lm_eval.utils:make_disjoint_window", "stock's rolling windows", "public helper; kept listed"),
    UpstreamName("lm_eval.utils:simple_parse_args_string", "model_args strings parsed as lm-eval does", "public helper; kept listed"),
    UpstreamName("lm_eval.api.model:LM", "the cache-only front of a fully cached run", "public API"),
    UpstreamName("lm_eval.api.model:TemplateLM", "vllm_ext's server mode", "public API"),
    UpstreamName("lm_eval.api.instance:Instance", "cache verify rebuilds requests", "public API"),
    UpstreamName("lm_eval.api.registry:model_registry", "registration (0.4.13 has no plugin discovery)",
                 "lm-eval > 0.4.13 (the lm_eval.models entry-point group)"),
    UpstreamName("lm_eval.tasks:TaskManager", "lm-eval-ext run adds tasks/ to the include path", "public API"),
    UpstreamName("lm_eval.__main__:cli_evaluate", "lm-eval-ext run hands over to lm-eval's CLI", "open (no public CLI entry)"),
    # transformers: the in-place KV cache and the grouped-query attention
    UpstreamName("transformers.cache_utils:DynamicLayer", "GrowingLayer appends in place instead of torch.cat",
                 "open (no public per-layer cache API)"),
    UpstreamName("transformers.integrations.sdpa_attention:sdpa_attention_forward",
                 "everything but a masked CPU grouped-query call goes to transformers' own attention", "open"),
    UpstreamName("transformers.masking_utils:AttentionMaskInterface", "the mask function of the registered attention", "open"),
    UpstreamName("transformers.masking_utils:sdpa_mask", "the mask function of the registered attention", "open"),
    UpstreamName("transformers:PretrainedConfig._attn_implementation",
                 "switches a model to the grouped-query attention inside a with block",
                 "open (set_attn_implementation is not per call)"),
    # vLLM: what vllm_ext imports, and the internals it reads by attribute on vLLM's objects
    UpstreamName("vllm.engine.arg_utils:EngineArgs", "the context length vLLM itself would choose", "open"),
    UpstreamName("vllm.engine.arg_utils:EngineArgs.create_model_config",
                 "vLLM's ModelConfig of a run without loading weights (dtype, longest context)", _OPEN_VLLM),
    UpstreamName("vllm:LLM.llm_engine", "stepped directly so results arrive per engine step; its configs read",
                 "open (LLM has no step-wise public API)"),
    UpstreamName("vllm:LLM.enqueue", "queues requests without waiting for them (generate waits for all)", _OPEN_VLLM),
    UpstreamName(f"{_LLM_ENGINE}.has_unfinished_requests", "the step loop of iter_finished", _OPEN_VLLM),
    UpstreamName(f"{_LLM_ENGINE}.step", "the step loop of iter_finished: finished requests per step", _OPEN_VLLM),
    UpstreamName(f"{_LLM_ENGINE}.abort_request", "requests still queued when the caller stops", _OPEN_VLLM),
    UpstreamName(f"{_LLM_ENGINE}.engine_core", "shut down now: several engines in one process", _OPEN_VLLM),
    UpstreamName("vllm.v1.engine.core_client:EngineCoreClient.shutdown", "shut down now: several engines in one process",
                 _OPEN_VLLM),
    UpstreamName(f"{_LLM_ENGINE}.model_config", "the context length the engine allows", _OPEN_VLLM),
    UpstreamName(f"{_LLM_ENGINE}.vllm_config", "the KV block size the engine chose", _OPEN_VLLM),
    UpstreamName("vllm.config:VllmConfig.cache_config", "the KV block size the engine chose", _OPEN_VLLM),
    UpstreamName("vllm.config:CacheConfig.block_size",
                 "prefix-cache reuse is counted in whole blocks (warm_prompt, reusable_blocks)", _OPEN_VLLM),
    UpstreamName("vllm.config:ModelConfig.max_model_len", "the context vLLM allows: cache keys and the length check",
                 _OPEN_VLLM),
    UpstreamName("vllm:SamplingParams.skip_reading_prefix_cache",
                 "left None it is True whenever prompt logprobs are asked for; False lets choices read their "
                 "context's cached blocks", "open (vLLM 0.32: no public switch for prompt-logprob requests)"),
    UpstreamName("vllm:RequestOutput.num_cached_tokens", "whether vLLM reused the warmed blocks, else stock rescoring",
                 _OPEN_VLLM),
    UpstreamName("vllm:RequestOutput.prompt_logprobs", "prompt logprobs parsed as stock does", _OPEN_VLLM),
    UpstreamName("vllm:RequestOutput.outputs", "generated text parsed as stock does", _OPEN_VLLM),
    UpstreamName("vllm:RequestOutput.request_id", "results of a step matched to their prompts", _OPEN_VLLM),
    UpstreamName("vllm:RequestOutput.finished", "results of a step that are complete", _OPEN_VLLM),
    UpstreamName("vllm:CompletionOutput.text", "generated text parsed as stock does", _OPEN_VLLM),
    UpstreamName("vllm.logprobs:Logprob.logprob", "prompt logprobs as floats (picklable, as stock reads them)",
                 _OPEN_VLLM),
    UpstreamName("vllm:CompletionOutput.logprobs", "a probe's logprob of the token after its prompt", _OPEN_VLLM),
    UpstreamName("vllm:CompletionOutput.token_ids", "generated tokens, counted in the cost report", _OPEN_VLLM),
    UpstreamName("vllm:SamplingParams.logprob_token_ids",
                 "a probe asks for the logprobs of given tokens at its generated position", _OPEN_VLLM),
    UpstreamName("vllm:SamplingParams.extra_args", "the first position scoring reads, for vllm_ext's runner method",
                 _OPEN_RUNNER),
    # vLLM's V1 model runner: prompt logprobs from the scored position on, all requests at once (prompt_logprobs.py)
    UpstreamName(f"{_RUNNER}._get_prompt_logprobs_dict", "replaced on vllm_ext's engines by prompt_logprobs_from",
                 _OPEN_RUNNER),
    UpstreamName(f"{_RUNNER}._sync_device", "the non-blocking copies land before vLLM reads them", _OPEN_RUNNER),
    UpstreamName(f"{_RUNNER}.num_prompt_logprobs", "requests that asked for prompt logprobs", _OPEN_RUNNER),
    UpstreamName(f"{_RUNNER}.requests", "each request's prompt, progress and sampling parameters", _OPEN_RUNNER),
    UpstreamName(f"{_RUNNER}.query_start_loc", "where a request's rows start in the step's hidden states", _OPEN_RUNNER),
    UpstreamName(f"{_RUNNER}.input_batch", "a request's index in the step", _OPEN_RUNNER),
    UpstreamName(f"{_RUNNER}.sampler", "vLLM's own log-softmax and top-k for prompt logprobs", _OPEN_RUNNER),
    UpstreamName(f"{_RUNNER}.model_config", "the logprobs mode", _OPEN_RUNNER),
    UpstreamName("vllm.v1.worker.gpu_input_batch:InputBatch.req_id_to_index", "a request's index in the step",
                 _OPEN_RUNNER),
    UpstreamName(f"{_REQUEST_STATE}.in_progress_prompt_logprobs_cpu", "rows of a prefill split over steps",
                 _OPEN_RUNNER),
    UpstreamName(f"{_REQUEST_STATE}.num_computed_tokens", "the first row this step computed", _OPEN_RUNNER),
    UpstreamName(f"{_REQUEST_STATE}.prompt_token_ids", "the tokens the rows score", _OPEN_RUNNER),
    UpstreamName("vllm.v1.sample.sampler:Sampler.compute_logprobs", "vLLM's own log-softmax", _OPEN_RUNNER),
    UpstreamName("vllm.v1.sample.sampler:Sampler.gather_logprobs", "vLLM's own top-k and rank", _OPEN_RUNNER),
    UpstreamName("vllm.config:ModelConfig.logprobs_mode", "raw logprobs or logits, as vLLM's loop", _OPEN_RUNNER),
    UpstreamName("vllm.v1.outputs:LogprobsTensors", "the rows vLLM's frontend reads", _OPEN_RUNNER),
    UpstreamName("vllm.v1.outputs:LogprobsTensors.empty_cpu", "the rows vLLM's frontend reads", _OPEN_RUNNER),
    # accelerate: where an offloaded module computes
    UpstreamName("accelerate.hooks:add_hook_to_module._hf_hook",
                 "an offloaded module's hook, read by getattr where accelerate puts it (scoring.execution_device)",
                 "open (accelerate has no public accessor)"),
    UpstreamName("accelerate.hooks:AlignDevicesHook.execution_device", "where an offloaded module computes",
                 "open (accelerate has no public accessor)"),
    # torch: attention that also returns its log-sum-exp (the cascaded attention's merge needs it)
    UpstreamName("torch:ops.aten._scaled_dot_product_flash_attention_for_cpu",
                 "fused CPU attention with its log-sum-exp, for hf_ext's cascaded generation attention",
                 "open (scaled_dot_product_attention does not return the log-sum-exp)"),
)


def attention_with_lse(query, key, value, additive_mask, scale: float):
    """``(softmax(q k^T * scale + mask) v, logsumexp)`` for ``[batch, heads, queries, dim]`` inputs
    (``lse``: ``[batch, heads, queries, 1]``). On CPU the fused kernel scaled_dot_product_attention
    runs (one pass, no score matrix kept); elsewhere the same in plain products."""
    import torch

    if query.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, False, attn_mask=additive_mask, scale=scale)
        return out, lse.unsqueeze(-1)
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    if additive_mask is not None:
        scores.add_(additive_mask)
    top = scores.amax(dim=-1, keepdim=True)
    weights = scores.sub_(top).exp_()
    total = weights.sum(dim=-1, keepdim=True)
    return torch.matmul(weights, value).div_(total), top.add_(total.log_())


def dynamic_cache_for(config):
    """``DynamicCache(config=config)`` (per-layer cache kinds from the config, transformers >= 4.56),
    or None where this transformers takes no config. Goes when the floor is transformers 4.56."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:
        return None
