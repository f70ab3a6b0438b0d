"""How much a KV block size lets ``score_with_prefix_cache`` save: tokens vLLM computes, by arithmetic.

vLLM's prefix cache holds whole KV blocks only, and a scored position can never come from it, so
what ``vllm_ext`` saves on multiple choice depends on how many whole blocks each context spans.
This script builds the real requests of lm-eval's own ARC-Easy (0-shot) or MMLU (5-shot) over
``../shared/data`` (tokenized as lm-eval pairs them), and counts, per block size, the prompt tokens
stock ``vllm`` computes (every prompt from scratch: prompt logprobs skip the cache) against
``vllm_ext``'s plan: its own :func:`~lm_eval_ext.vllm.scoring.worth_warming` rule, one warm-up
per context (:func:`~lm_eval_ext.vllm.scoring.warm_prompt`: its whole blocks), choices that hit whole cached blocks, and a stock re-score where the cache would
cover a scored position (:func:`~lm_eval_ext.vllm.scoring.all_continuation_computed`'s check).

The cache is simulated sequentially and never evicts, so the savings are an upper bound (requests
that vLLM schedules in one step do not share blocks computed in that step). Compute scales with
these tokens, so ``stock / vllm_ext`` bounds the evaluation speedup (docs/vllm.md compares).

    python benchmarks/vllm_block_bound.py --suite arc --limit 100 --block-sizes 128,32,16,8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def scoring_requests(model: str, suite: str, limit: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(context tokens, continuation tokens) of every loglikelihood request, in lm-eval's order."""
    from lm_eval.api.model import TemplateLM
    from lm_eval.tasks import TaskManager, get_task_dict
    from transformers import AutoTokenizer

    from benchmarks.lib import real_tasks

    data = real_tasks.find_multiple_choice_data(ROOT)
    if data is None:
        raise SystemExit("needs ../shared/data (arc_easy/, mmlu/) or BENCH_DATA_DIR")
    subjects = real_tasks.VLLM_MMLU_SUBJECTS
    names = [real_tasks.ARC] if suite == "arc" else [real_tasks.mmlu_task(s) for s in subjects]
    include = real_tasks.write_tasks(data, Path(tempfile.mkdtemp(prefix="block_bound_")), subjects)
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


class BlockCache:
    """Whole blocks keyed by the tokens up to their end (vLLM chains block hashes the same way)."""

    def __init__(self, block_size: int) -> None:
        self.block_size, self.blocks = block_size, set()

    def hit_tokens(self, prompt: tuple[int, ...]) -> int:
        """Cached leading tokens; vLLM computes at least the last prompt token."""
        hit, size = 0, self.block_size
        while hit + size <= len(prompt) - 1 and prompt[: hit + size] in self.blocks:
            hit += size
        return hit

    def add(self, prompt: tuple[int, ...]) -> None:
        for end in range(self.block_size, len(prompt) + 1, self.block_size):
            self.blocks.add(prompt[:end])


def computed_tokens(requests, block_size: int) -> tuple[int, int, int]:
    """(stock tokens, vllm_ext tokens, requests re-scored the stock way) at one block size."""
    from lm_eval_ext.vllm.scoring import (
        all_continuation_computed,
        warm_prompt,
        worth_warming,
    )

    keys = [context for context, _ in requests]
    warm = worth_warming(keys, [len(c) for c in keys], block_size)
    cache, ext, rescored = BlockCache(block_size), 0, 0
    for context in dict.fromkeys(k for k in keys if warm[k]):  # the warm-ups run first
        prompt = tuple(warm_prompt(context, block_size))
        ext += len(prompt) - cache.hit_tokens(prompt)
        cache.add(prompt)
    for context, continuation in requests:
        prompt = context + continuation
        if not warm[context]:
            ext += len(prompt)
            continue
        hit = cache.hit_tokens(prompt)
        ext += len(prompt) - hit
        if not all_continuation_computed(SimpleNamespace(num_cached_tokens=hit), len(context)):  # scored again
            ext += len(prompt)
            rescored += 1
        cache.add(prompt)
    return sum(len(c) + len(x) for c, x in requests), ext, rescored


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / ".models" / "smollm2-135m"))
    parser.add_argument("--suite", choices=("arc", "mmlu"), default="arc")
    parser.add_argument("--limit", type=int, default=100, help="documents per task")
    parser.add_argument("--block-sizes", default="128,32,16,8")
    args = parser.parse_args()
    requests = scoring_requests(args.model, args.suite, args.limit)
    contexts = {c for c, _ in requests}
    print(f"{args.suite}: {len(requests)} requests, {len(contexts)} contexts, mean context "
          f"{sum(map(len, contexts)) / len(contexts):.1f} tokens")
    print(f"{'block':>5} {'stock tokens':>12} {'vllm_ext tokens':>15} {'re-scored':>9} {'stock/ext':>9}")
    for block_size in (int(b) for b in args.block_sizes.split(",")):
        stock, ext, rescored = computed_tokens(requests, block_size)
        print(f"{block_size:>5} {stock:>12} {ext:>15} {rescored:>9} {stock / ext:>8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
