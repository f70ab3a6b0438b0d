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


COT = "gsm8k_cot_local"
SELF_CONSISTENCY = "gsm8k_cot_self_consistency_local"
#: the issue's setting for the self-consistency target (lm-eval's own leaves max_gen_toks to the model)
SELF_CONSISTENCY_MAX_GEN_TOKS = 64


def cot_definitions(data_dir: Path, repeats: int | None = None) -> dict[str, dict]:
    """lm-eval's ``gsm8k_cot`` (8 fixed shots) and ``gsm8k_cot_self_consistency`` (64 samples per
    question, ``max_gen_toks`` 64 here) over the local files: an ``include:`` of the installed
    definition, only the data source (and the sampled task's length) replaced. ``repeats``: fewer
    samples per question, for short suites."""
    import lm_eval

    stock = Path(lm_eval.__file__).parent / "tasks" / "gsm8k"
    source = {"dataset_path": "json", "dataset_name": None, "tag": [], "dataset_kwargs": {"data_files": {
        "train": str((data_dir / "train.jsonl").resolve()), "test": str((data_dir / "test.jsonl").resolve())}}}
    sampled = yaml.safe_load((stock / "gsm8k-cot-self-consistency.yaml").read_text())["generation_kwargs"]
    return {
        COT: {"include": str(stock / "gsm8k-cot.yaml"), "task": COT, **source},
        SELF_CONSISTENCY: {"include": str(stock / "gsm8k-cot-self-consistency.yaml"), "task": SELF_CONSISTENCY,
                           **source, "generation_kwargs": {**sampled, "max_gen_toks": SELF_CONSISTENCY_MAX_GEN_TOKS},
                           **({"repeats": repeats} if repeats else {})},
    }


def write_generation_tasks(data_dir: Path, out_dir: Path, repeats: int | None = None) -> Path:
    """``gsm8k_local``, ``gsm8k_cot_local`` and ``gsm8k_cot_self_consistency_local`` into ``out_dir``."""
    write_local_task(data_dir, out_dir)
    for name, body in cot_definitions(data_dir, repeats).items():
        (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return out_dir
