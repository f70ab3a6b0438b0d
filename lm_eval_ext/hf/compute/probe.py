"""Remember a token budget once found, and agree on one under data parallel.

Budgets are stored per (model identity, dtype, device name and memory, strategy, request kind) in
a small JSON file, so a second run does not probe (:class:`ProbeCache`); under data parallel every
rank takes the minimum over ranks (:func:`agree_min`), so all ranks agree on one budget. The search
and the CPU arithmetic are pure: :mod:`lm_eval_ext.hf.policy.token_budget`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lm_eval_ext.files import cache_root, write_json_atomic


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
