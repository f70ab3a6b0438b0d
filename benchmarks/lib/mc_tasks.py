"""Point lm-eval's own ARC-Easy and MMLU task definitions at local files (written at run time).

Everything but the data source is kept from the definitions shipped in the installed lm-eval:
prompts, choices, few-shot split and sampler (MMLU: ``first_n`` from ``dev``, so the documents of
one subject share one 5-shot prefix; ``num_fewshot: 5`` is set here, as ``--num_fewshot 5`` would), metrics. Data: ``../shared/data`` (see its README); never copied.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

ARC_TASK = "arc_easy_local"
MMLU_PREFIX = "mmlu_local_"
#: subjects used by tests and benchmarks (a few, so a run fits the shared 2-core machine)
MMLU_SUBJECTS = ("abstract_algebra", "anatomy", "astronomy", "high_school_geography")


def find_data_root(checkout: Path) -> Path | None:
    """``$BENCH_DATA_DIR``, else ``../shared/data`` next to the checkout (or its parent)."""
    roots = [os.environ.get("BENCH_DATA_DIR"), checkout.parent / "shared" / "data",
             checkout.parent.parent / "shared" / "data"]
    found = (Path(r) for r in roots if r)
    return next((d for d in found if (d / "arc_easy" / "test.jsonl").exists() and (d / "mmlu" / "dev").is_dir()), None)


def _stock(*parts: str) -> dict:
    import lm_eval

    return yaml.safe_load((Path(lm_eval.__file__).parent / "tasks").joinpath(*parts).read_text())


def arc_definition(data_root: Path) -> dict:
    task = {k: v for k, v in _stock("arc", "arc_easy.yaml").items() if k not in ("dataset_path", "dataset_name", "tag")}
    task["task"] = ARC_TASK
    task["dataset_path"] = "json"
    task["dataset_kwargs"] = {"data_files": {split: str((data_root / "arc_easy" / f"{split}.jsonl").resolve())
                                             for split in ("train", "validation", "test")}}
    return task


def mmlu_definition(data_root: Path, subject: str) -> dict:
    template = _stock("mmlu", "default", "_default_template_yaml")
    stock = _stock("mmlu", "default", f"mmlu_{subject}.yaml")
    task = {k: v for k, v in {**template, **stock}.items()
            if k not in ("dataset_path", "dataset_name", "tag", "include", "task_alias")}
    task["task"] = MMLU_PREFIX + subject
    task["num_fewshot"] = 5  # the published MMLU setting (lm-eval's YAML leaves it to --num_fewshot)
    task["dataset_path"] = "json"
    task["dataset_kwargs"] = {"data_files": {split: str((data_root / "mmlu" / split / f"{subject}.jsonl").resolve())
                                             for split in ("dev", "test")}}
    return task


def write_local_tasks(data_root: Path, out_dir: Path) -> Path:
    """Write ``arc_easy_local`` and ``mmlu_local_<subject>`` YAMLs; returns ``out_dir`` (include path)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{ARC_TASK}.yaml").write_text(yaml.safe_dump(arc_definition(data_root), sort_keys=False))
    for subject in MMLU_SUBJECTS:
        (out_dir / f"{MMLU_PREFIX}{subject}.yaml").write_text(
            yaml.safe_dump(mmlu_definition(data_root, subject), sort_keys=False))
    return out_dir


def mmlu_tasks() -> list[str]:
    return [MMLU_PREFIX + s for s in MMLU_SUBJECTS]
