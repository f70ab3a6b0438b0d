"""The multiple-choice task shapes ``vllm_ext`` is measured on: lm-eval's own ARC-Easy and MMLU
definitions over ``../shared/data`` (through :func:`benchmarks.lib.real_tasks.definitions`, each YAML
``include:``-ing the installed lm-eval's file), in the four shapes whose prefixes differ:

- ``arc0``: ARC-Easy 0-shot: contexts of ~28 tokens, mostly under one 32-token KV block;
- ``arc5``: ARC-Easy 5-shot with lm-eval's default sampler: examples drawn per document, so the
  context (~180 tokens) is shared by an item's choices only;
- ``mmlu5``: MMLU 5-shot (``first_n``): one few-shot block per subject, shared by every document;
- ``mmlu0``: MMLU 0-shot: ~80-token contexts, four one-token endings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.lib import real_tasks

#: the MMLU subjects of the vLLM measurements (a few, so stock fits the 2-core machine)
SUBJECTS = real_tasks.VLLM_MMLU_SUBJECTS


@dataclass(frozen=True)
class Shape:
    name: str
    title: str
    tasks: tuple[str, ...]
    default_limit: int
    """Documents per task when the caller gives none."""


SHAPES = {
    "arc0": Shape("arc0", "ARC-Easy 0-shot", (real_tasks.ARC,), 100),
    "arc5": Shape("arc5", "ARC-Easy 5-shot, examples per document", ("arc_easy_5shot_local",), 40),
    "mmlu5": Shape("mmlu5", "MMLU 5-shot (first_n), 4 subjects", tuple(real_tasks.mmlu_task(s) for s in SUBJECTS), 20),
    "mmlu0": Shape("mmlu0", "MMLU 0-shot, 4 subjects", tuple(f"mmlu0_local_{s}" for s in SUBJECTS), 25),
}


def definitions(data_dir: Path) -> dict[str, dict]:
    """Task name -> YAML body of every shape's tasks."""
    stock = real_tasks.definitions(data_dir, SUBJECTS)
    out = {real_tasks.ARC: stock[real_tasks.ARC],
           "arc_easy_5shot_local": {**stock[real_tasks.ARC], "task": "arc_easy_5shot_local", "num_fewshot": 5}}
    for subject in SUBJECTS:
        five = stock[real_tasks.mmlu_task(subject)]
        out[five["task"]] = five
        out[f"mmlu0_local_{subject}"] = {**five, "task": f"mmlu0_local_{subject}", "num_fewshot": 0}
    return out


def write_tasks(data_dir: Path, out_dir: Path) -> Path:
    """Every shape's task YAML in ``out_dir``; returns it, for the include path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, body in definitions(data_dir).items():
        (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return out_dir


def find_data(checkout: Path) -> Path | None:
    return real_tasks.find_multiple_choice_data(checkout)
