"""What vLLM's prefix-cache skip for ``prompt_logprobs`` costs on multiple choice.

vLLM V1 does not use its prefix cache for a request that asks for prompt logprobs, so every choice
of a multiple-choice item recomputes the item's shared context. This script takes the real requests
of ``ext_arith_mc`` (5-shot contexts, 4 multi-token choices each) and runs them on one engine twice:

- ``with_prompt_logprobs``: how scoring must run (prompt_logprobs=1, max_tokens=1);
- ``prefix_cached``: the same prompts without prompt logprobs (max_tokens=1), prefix cache on,
  i.e. the compute that scoring would need if vLLM cached shared contexts for it.

Both report wall time and the prompt tokens vLLM served from its cache (``num_cached_tokens``).
The difference of the wall times is the cost of the skip.

    python benchmarks/vllm_prefix_cache_cost.py --model .models/smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _name, _value in {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1",
                      "DO_NOT_TRACK": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1",
                      "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
    os.environ.setdefault(_name, _value)


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


def timed_pass(llm, prompts: list[list[int]], params) -> dict:
    from vllm import TokensPrompt

    llm.reset_prefix_cache()
    started_s = time.perf_counter()
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    wall_s = time.perf_counter() - started_s
    cached_tokens = sum(o.num_cached_tokens or 0 for o in outputs)
    prompt_tokens = sum(len(p) for p in prompts)
    return {"wall_s": round(wall_s, 2), "prompt_tokens": prompt_tokens, "cached_prompt_tokens": cached_tokens,
            "computed_prompt_tokens": prompt_tokens - cached_tokens}


def measure_prefix_cache_cost(model: str, limit: int | None = None, repeats: int = 2) -> dict:
    """Best of ``repeats`` for each pass; returns both passes and the cost of the skip."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="float32", enforce_eager=True, enable_prefix_caching=True, seed=1234)
    try:
        prompts = multiple_choice_prompts(llm.get_tokenizer(), limit)
        scoring = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1, detokenize=False)
        plain = SamplingParams(temperature=0, max_tokens=1, detokenize=False)
        timed_pass(llm, prompts[:8], scoring)  # warm-up
        with_logprobs = min((timed_pass(llm, prompts, scoring) for _ in range(repeats)), key=lambda r: r["wall_s"])
        cached = min((timed_pass(llm, prompts, plain) for _ in range(repeats)), key=lambda r: r["wall_s"])
    finally:
        llm.llm_engine.engine_core.shutdown()
    return {"model": model, "requests": len(prompts), "with_prompt_logprobs": with_logprobs, "prefix_cached": cached,
            "skip_cost_s": round(with_logprobs["wall_s"] - cached["wall_s"], 2),
            "skip_cost_ratio": round(with_logprobs["wall_s"] / max(cached["wall_s"], 1e-9), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / ".models" / "smollm2-135m"))
    parser.add_argument("--limit", type=int, default=None, help="items (default: all 60)")
    args = parser.parse_args()
    print(json.dumps(measure_prefix_cache_cost(args.model, args.limit), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
