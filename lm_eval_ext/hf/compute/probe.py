"""Find the token budget (padded tokens per batch) once, and remember it.

- GPU: grow the budget by doubling with batches shaped like the real requests until a forward
  runs out of memory, then bisect between the last size that ran and the first that did not.
- CPU: nothing raises out-of-memory there (Linux overcommits and the kernel's OOM killer strikes
  instead), so the budget is derived from available RAM and the model's per-token bytes.
- Results are stored per (model identity, dtype, device name and memory, strategy, request kind)
  in a small JSON file, so a second run does not probe. Under data parallel every rank takes
  the minimum over ranks, so all ranks agree on one budget.

The search and the arithmetic are pure; :class:`ProbeCache` touches the disk; ``agree_min`` the
accelerator.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from lm_eval_ext.files import cache_root, write_json_atomic

logger = logging.getLogger("lm_eval_ext.hf.compute.probe")

#: On CPU the matmul throughput of a forward pass stops growing long before this many tokens
#: per batch (see benchmarks/README.md, "peak forward"), while peak RSS keeps growing with it.
CPU_MAX_BATCH_TOKENS = 4096
#: Generation budgets count rows x (prompt + max_gen_toks): KV cache held, not tokens computed
#: per forward (long prompts are prefilled one row at a time, decode steps compute one token per
#: row). A decode step reads all weights whatever the rows, so more rows are nearly free: 8
#: GSM8K rows of ~1,000 cached tokens took 14 ms per row-token on the 2-core CPU, 1 row 67-77 ms.
#: The cap bounds the KV cache instead (SmolLM2-135M: 45 KiB per token, ~1.4 GiB at the cap).
CPU_MAX_GENERATION_TOKENS = 32768
#: Share of the RAM reported available that one batch may use; the rest is headroom for the
#: allocator, the tokenizer, lm-eval's own data, and other processes on the machine.
CPU_RAM_FRACTION = 0.5
#: The smallest useful budget; below it a probe reports failure instead of crawling.
MIN_BATCH_TOKENS = 16


@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide per-token memory (from the model's config)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    dtype_bytes: int


def per_token_bytes(shape: ModelShape, *, kind: str, scored_fraction: float, row_tokens: int) -> int:
    """Bytes one padded token costs at the peak of a batch (one layer's activations live at a
    time, no autograd), plus logits where they are computed.

    Worked example, SmolLM2-135M float32, loglikelihood with 5 % scored positions, 512-token rows:
    activations (6*576 + 4*1536 + 2*192) * 4 = 39 KiB; attention mask + scores for a 512 row
    512 * 4 * (1 + 9) = 20 KiB; logits 0.05 * 49152 * 12 = 29 KiB -> ~88 KiB per token.
    """
    kv_width = shape.num_kv_heads * shape.head_dim
    activations = (6 * shape.hidden_size + 4 * shape.intermediate_size + 2 * kv_width) * shape.dtype_bytes
    num_heads = max(1, shape.hidden_size // max(1, shape.head_dim))
    attention = row_tokens * 4 * (1 + num_heads)
    # logits, their float32 log-softmax, and the argmax scratch
    logits = shape.vocab_size * (shape.dtype_bytes + 8) * scored_fraction
    kv_cache = shape.num_layers * 2 * kv_width * shape.dtype_bytes if kind == "generate_until" else 0
    return int(activations + attention + logits + kv_cache)


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


@dataclass(frozen=True)
class ProbeKey:
    model: str
    dtype: str
    device: str
    device_memory_bytes: int
    strategy: str
    request_kind: str

    def as_str(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def default_cache_path() -> Path:
    return cache_root() / "probe_cache.json"


class ProbeCache:
    """``{ProbeKey: budget tokens}`` in one JSON file, written atomically (rename)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()

    def _load(self) -> dict[str, int]:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def get(self, key: ProbeKey) -> int | None:
        return self._load().get(key.as_str())

    def put(self, key: ProbeKey, budget_tokens: int) -> None:
        data = self._load()
        data[key.as_str()] = int(budget_tokens)
        write_json_atomic(self.path, data, indent=1, sort_keys=True)


def agree_min(accelerator, budget_tokens: int) -> int:
    """Minimum over data-parallel ranks (every rank must call this the same number of times)."""
    if accelerator is None or accelerator.num_processes <= 1:
        return budget_tokens
    import torch

    gathered = accelerator.gather(torch.tensor([budget_tokens], device=accelerator.device))
    return int(gathered.min().item())
