"""PURE: the token budget's arithmetic: the search a GPU probe runs, and the CPU budget from RAM.

- GPU: grow the budget by doubling with batches shaped like the real requests until a forward
  runs out of memory, then bisect between the last size that ran and the first that did not
  (:func:`search_budget`; the caller's ``fits`` runs the batches).
- CPU: nothing raises out-of-memory there (Linux overcommits and the kernel's OOM killer strikes
  instead), so the budget is derived from available RAM and what one token costs
  (:func:`cpu_budget_tokens`, with :func:`lm_eval_ext.plan.token_bytes.bytes_per_token`).

Worked example: SmolLM2-135M in float32 costs ~66 KiB per loglikelihood token (see
:mod:`lm_eval_ext.plan.token_bytes`); with 400 MiB available a batch may use 200 MiB, i.e.
3,093 tokens, under the CPU cap of 4,096.
"""

from __future__ import annotations

from collections.abc import Callable

#: On CPU the matmul throughput of a forward pass stops growing long before this many tokens
#: per batch (see benchmarks/README.md, "peak forward"), while peak RSS keeps growing with it.
CPU_MAX_BATCH_TOKENS = 4096
#: Generation budgets count KV held, rows x columns (a row's prompt after its shared prefix +
#: max_gen_toks: ``generation_rows.py``), not tokens per forward. A decode step reads every weight
#: once whatever the rows, so more rows are nearly free in time; the cap bounds the memory instead:
#: SmolLM2-135M holds 45 KiB per cached token, 0.53 GiB at the cap, next to 0.5 GiB of weights.
#: Measured alone on 32 GSM8K docs whose longest own prompt makes 1,695-column rows, against stock's
#: fastest setting (one row at a time, 1,286-1,321 MiB): 7 rows (this cap) 1,769-1,968 MiB over three
#: runs, median 1.42x; 8 rows 1.51-1.54x; 9 rows 1.55x but 5-10 % faster (docs/engine.md). The pool
#: is the difference (~75 MiB a row of 1,695 columns); single runs scatter by ~100 MiB.
#: Peak RSS within 1.5x of stock's is the project's target, so the cap keeps 7; max_batch_tokens
#: buys the speed back with memory.
CPU_MAX_GENERATION_TOKENS = 12288
#: Share of the RAM reported available that one batch may use; the rest is headroom for the
#: allocator, the tokenizer, lm-eval's own data, and other processes on the machine.
CPU_RAM_FRACTION = 0.5
#: The smallest useful budget; below it a probe reports failure instead of crawling.
MIN_BATCH_TOKENS = 16


def cpu_budget_tokens(available_bytes: int, token_bytes: int, kind: str = "loglikelihood") -> int:
    """``available_bytes * CPU_RAM_FRACTION / token_bytes`` clamped to the CPU range of ``kind``."""
    fitted = int(available_bytes * CPU_RAM_FRACTION) // max(1, token_bytes)
    cap = CPU_MAX_GENERATION_TOKENS if kind == "generate_until" else CPU_MAX_BATCH_TOKENS
    return max(MIN_BATCH_TOKENS, min(cap, fitted))


def search_budget(fits: Callable[[int], bool], *, start_tokens: int, max_tokens: int) -> int:
    """Largest budget in [MIN_BATCH_TOKENS, max_tokens] for which ``fits`` holds: double from
    ``start_tokens`` until a failure (or ``max_tokens``), then bisect. Returns MIN_BATCH_TOKENS
    if even that fails (the run then relies on in-flight OOM splitting)."""
    low, high = 0, None
    size = max(MIN_BATCH_TOKENS, min(start_tokens, max_tokens))
    while high is None:
        if fits(size):
            low = size
            if size >= max_tokens:
                return size
            size = min(max_tokens, size * 2)
        else:
            high = size
    while high - low > max(MIN_BATCH_TOKENS, low // 16):  # 1/16 resolution is plenty
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return max(low, MIN_BATCH_TOKENS)
