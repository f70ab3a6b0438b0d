"""EDGE (child side, started by :mod:`benchmarks.lib.launch` in the vLLM interpreter): what vLLM's
prefix cache can save on multiple choice, by arithmetic and by measurement.

- :func:`block_bound`: how much a KV block size lets ``vllm_ext``'s prefix-cache scoring save, as the
  prompt tokens vLLM computes. vLLM's prefix cache holds whole KV blocks only, and a scored position
  can never come from it. The real requests of a task shape of :mod:`benchmarks.lib.vllm_mc_shapes`
  (ARC-Easy 0-shot and 5-shot, MMLU 5-shot and 0-shot over ``../shared/data``; ``arc`` and ``mmlu``
  name the 0-shot and 5-shot ones), tokenized as lm-eval pairs them, are counted per block size:
  stock ``vllm`` computes every prompt from scratch (prompt logprobs skip the cache), and at least
  :func:`~lm_eval_ext.vllm.score_plan.minimal_tokens` must be computed (each context's whole blocks
  once, each request from its last reusable block on: what ``vllm_ext`` computes, a repaired choice's
  probe included, unless vLLM evicts a block it needs). ``stock / minimal`` is the cost report's token
  bound.
- :func:`prefix_cache_cost`: the real requests of ``ext_arith_mc`` (5-shot contexts, 4 multi-token
  choices each) on one engine, twice: with prompt logprobs (how scoring must run) and without them
  with the prefix cache on (the compute scoring would need if vLLM cached shared contexts for it).
  The difference of the wall times is what vLLM's prefix-cache skip costs.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]


#: the earlier names of two shapes
SHAPE_ALIASES = {"arc": "arc0", "mmlu": "mmlu5"}


def scoring_requests(model: str, data_dir: str, suite: str, limit: int | None, task_dir: str):
    """(context tokens, continuation tokens) of every loglikelihood request, in lm-eval's order."""
    from lm_eval.api.model import TemplateLM
    from lm_eval.tasks import TaskManager, get_task_dict
    from transformers import AutoTokenizer

    from benchmarks.lib.vllm_mc_shapes import SHAPES, write_tasks

    names = list(SHAPES[SHAPE_ALIASES.get(suite, suite)].tasks)
    include = write_tasks(Path(data_dir), Path(task_dir))
    tasks = get_task_dict(names, TaskManager(include_path=str(include), include_defaults=False))
    tokenizer = AutoTokenizer.from_pretrained(model)
    # lm-eval's own pairing (trailing spaces move to the continuation), as vLLM's adapter encodes
    pairing = SimpleNamespace(backend="causal", tok_encode=lambda text: tokenizer.encode(text, add_special_tokens=False))
    out = []
    for name in names:
        task = tasks[name]
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        for instance in task.instances:
            context, continuation = instance.args
            context_enc, continuation_enc = TemplateLM._encode_pair(pairing, context, continuation)
            out.append((tuple(context_enc), tuple(continuation_enc)))
    return out


def computed_tokens(requests, block_size: int) -> tuple[int, int]:
    """(stock tokens, minimal tokens) at one block size."""
    from lm_eval_ext.vllm.score_plan import minimal_tokens

    prompts = [context + continuation for context, continuation in requests]
    least = minimal_tokens(prompts, [len(context) for context, _ in requests], block_size)
    return sum(len(p) for p in prompts), sum(least)


def block_bound(model: str, data_dir: str, suite: str, limit: int | None, block_sizes: list[int],
                task_dir: str) -> dict:
    """Child target: the block table of one task shape as text lines."""
    requests = scoring_requests(model, data_dir, suite, limit, task_dir)
    contexts = {c for c, _ in requests}
    lines = [f"{suite}: {len(requests)} requests, {len(contexts)} contexts, mean context "
             f"{sum(map(len, contexts)) / len(contexts):.1f} tokens",
             f"{'block':>5} {'stock tokens':>12} {'minimal tokens':>14} {'bound':>7}"]
    for block_size in block_sizes:
        stock, least = computed_tokens(requests, block_size)
        lines.append(f"{block_size:>5} {stock:>12} {least:>14} {stock / least:>6.2f}x")
    return {"lines": lines}


def multiple_choice_prompts(tokenizer, limit: int | None) -> list[list[int]]:
    """Token ids of context + choice for every (item, choice) of ext_arith_mc, items in order."""
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=[str(ROOT / "tasks")], include_defaults=False)
    task = get_task_dict(["ext_arith_mc"], manager)["ext_arith_mc"]
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    prompts = []
    for instance in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
        context, continuation = instance.args
        prompts.append(tokenizer(context).input_ids + tokenizer(continuation, add_special_tokens=False).input_ids)
    return prompts


def _timed_pass(llm, prompts: list[list[int]], params) -> dict:
    from vllm import TokensPrompt

    llm.reset_prefix_cache()
    started_s = time.perf_counter()
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    wall_s = time.perf_counter() - started_s
    cached_tokens = sum(o.num_cached_tokens or 0 for o in outputs)
    prompt_tokens = sum(len(p) for p in prompts)
    return {"wall_s": wall_s, "prompt_tokens": prompt_tokens, "cached_prompt_tokens": cached_tokens,
            "computed_prompt_tokens": prompt_tokens - cached_tokens}


def prefix_cache_cost(model: str, limit: int | None, repetitions: int, dtype: str = "float32") -> dict:
    """Child target: ``repetitions`` passes of each kind, interleaved, after a warm-up."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype=dtype, enforce_eager=True, enable_prefix_caching=True, seed=1234)
    try:
        prompts = multiple_choice_prompts(llm.get_tokenizer(), limit)
        kinds = {"with_prompt_logprobs": SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1, detokenize=False),
                 "prefix_cached": SamplingParams(temperature=0, max_tokens=1, detokenize=False)}
        _timed_pass(llm, prompts[:8], kinds["with_prompt_logprobs"])  # warm-up
        passes: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for rep in range(repetitions):
            for kind in kinds if rep % 2 == 0 else list(kinds)[::-1]:
                passes[kind].append(_timed_pass(llm, prompts, kinds[kind]))
    finally:
        llm.llm_engine.engine_core.shutdown()
    return {"requests": len(prompts), "passes": passes}
