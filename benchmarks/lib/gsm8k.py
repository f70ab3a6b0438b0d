"""Point lm-eval's own gsm8k task definition at local files (written at run time, absolute paths).

Everything but the data source is kept from the definition shipped in the installed lm-eval:
prompt, 5-shot from train, generation settings, filters, metrics.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

TASK_NAME = "gsm8k_local"


def data_roots(checkout: Path) -> list[Path]:
    """Where the benchmark data may be: ``$BENCH_DATA_DIR``, else ``../shared/data`` next to the
    checkout (or next to its parent, for a worktree)."""
    roots = [os.environ.get("BENCH_DATA_DIR"), checkout.parent / "shared" / "data",
             checkout.parent.parent / "shared" / "data"]
    return [Path(r) for r in roots if r]


def find_data_dir(checkout: Path) -> Path | None:
    """The folder holding GSM8K's ``train.jsonl``/``test.jsonl`` under one of :func:`data_roots`."""
    return next((d for d in (r / "gsm8k" for r in data_roots(checkout)) if (d / "test.jsonl").exists()), None)


def stock_definition() -> dict:
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    return yaml.safe_load(path.read_text())


def local_definition(stock: dict, data_dir: Path) -> dict:
    """``stock`` with its hub dataset swapped for the local JSONL files (PURE)."""
    task = {k: v for k, v in stock.items() if k not in ("dataset_path", "dataset_name", "tag")}
    task["task"] = TASK_NAME
    task["dataset_path"] = "json"
    task["dataset_kwargs"] = {"data_files": {
        "train": str((data_dir / "train.jsonl").resolve()),
        "test": str((data_dir / "test.jsonl").resolve()),
    }}
    return task


def write_local_task(data_dir: Path, out_dir: Path) -> Path:
    """Write ``out_dir/gsm8k_local.yaml``; returns ``out_dir`` (for the include path)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    definition = local_definition(stock_definition(), data_dir)
    (out_dir / f"{TASK_NAME}.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    return out_dir
