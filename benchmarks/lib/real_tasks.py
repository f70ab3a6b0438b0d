"""lm-eval's own task definitions for ARC-Easy, MMLU, LAMBADA and WikiText-2 over local files.

Each task YAML is written at run time: it ``include:``s the definition shipped in the installed
lm-eval (absolute path, so its prompt, few-shot sampler, metrics and ``!function`` helpers are
lm-eval's own) and replaces only the data source with ``dataset_path: json`` over
``../shared/data``. GSM8K comes from :mod:`benchmarks.lib.gsm8k`. Nothing here copies the data.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from benchmarks.lib import gsm8k

#: MMLU subjects of the benchmark: short and long questions, STEM and humanities
MMLU_SUBJECTS = ("anatomy", "high_school_geography", "college_computer_science", "marketing")
#: MMLU subjects of the vLLM comparison and its tests (a few, so a stock run fits the 2-core machine)
VLLM_MMLU_SUBJECTS = ("abstract_algebra", "anatomy", "astronomy", "high_school_geography")
ARC = "arc_easy_local"
LAMBADA = "lambada_openai_local"
WIKITEXT = "wikitext_local"
MMLU_PREFIX = "mmlu_local_"
GSM8K = gsm8k.TASK_NAME


#: the short name of each task (``--limit arc=200``, the suites' ``real-tasks-arc``); MMLU's subjects are ``mmlu``
SHORT_NAMES = {"arc": ARC, "mmlu": "mmlu", "lambada": LAMBADA, "wikitext": WIKITEXT, "gsm8k": GSM8K}


def mmlu_task(subject: str) -> str:
    return f"{MMLU_PREFIX}{subject}"


def short_name(task: str) -> str:
    """``arc_easy_local`` -> ``arc``, any MMLU subject (or ``mmlu``) -> ``mmlu``."""
    if task == "mmlu" or task.startswith(MMLU_PREFIX):
        return "mmlu"
    return next((k for k, v in SHORT_NAMES.items() if v == task), task)


def _stock_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def _json_source(files: dict[str, Path]) -> dict:
    return {"dataset_path": "json", "dataset_name": None, "tag": [],
            "dataset_kwargs": {"data_files": {split: str(p.resolve()) for split, p in files.items()}}}


def definitions(data_dir: Path, subjects: tuple[str, ...] = MMLU_SUBJECTS) -> dict[str, dict]:
    """Task name -> YAML body (PURE apart from locating lm-eval's task folder)."""
    stock = _stock_dir()
    arc, mmlu = data_dir / "arc_easy", data_dir / "mmlu"
    out = {
        ARC: {"include": str(stock / "arc" / "arc_easy.yaml"), "task": ARC,
              **_json_source({s: arc / f"{s}.jsonl" for s in ("train", "validation", "test")})},
        LAMBADA: {"include": str(stock / "lambada" / "lambada_openai.yaml"), "task": LAMBADA,
                  **_json_source({"test": data_dir / "lambada_openai" / "test.jsonl"})},
        WIKITEXT: {"include": str(stock / "wikitext" / "wikitext.yaml"), "task": WIKITEXT,
                   "training_split": None, "validation_split": None,
                   **_json_source({"test": data_dir / "wikitext2" / "test.jsonl"})},
    }
    for subject in subjects:
        name = subject.replace("_", " ")
        out[mmlu_task(subject)] = {
            "include": str(stock / "mmlu" / "default" / "_default_template_yaml"), "task": mmlu_task(subject),
            "description": f"The following are multiple choice questions (with answers) about {name}.\n\n",
            "num_fewshot": 5,  # the published MMLU setting (lm-eval's YAML leaves it to --num_fewshot)
            **_json_source({"test": mmlu / "test" / f"{subject}.jsonl", "dev": mmlu / "dev" / f"{subject}.jsonl"}),
        }
    return out


def write_tasks(data_dir: Path, out_dir: Path, subjects: tuple[str, ...] = MMLU_SUBJECTS) -> Path:
    """Write every task YAML (GSM8K's too) into ``out_dir``; returns it, for the include path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, body in definitions(data_dir, subjects).items():
        (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    if (data_dir / "gsm8k" / "test.jsonl").exists():
        gsm8k.write_local_task(data_dir / "gsm8k", out_dir)
    return out_dir


def has_multiple_choice(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds ARC-Easy and MMLU."""
    return (data_dir / "arc_easy" / "test.jsonl").exists() and (data_dir / "mmlu" / "dev").is_dir()


def find_multiple_choice_data(checkout: Path) -> Path | None:
    """The first of :func:`gsm8k.data_roots` that holds ARC-Easy and MMLU: what the vLLM comparison
    and its tests need."""
    return next((d for d in gsm8k.data_roots(checkout) if has_multiple_choice(d)), None)


MISSING = ("real benchmark data not found (../shared/data: arc_easy, mmlu, lambada_openai, wikitext2, gsm8k; "
           "BENCH_DATA_DIR overrides)")


def available(data_dir: Path | None) -> bool:
    needed = ("arc_easy/test.jsonl", "mmlu/test", "lambada_openai/test.jsonl", "wikitext2/test.jsonl",
              "gsm8k/test.jsonl")
    return data_dir is not None and all((data_dir / n).exists() for n in needed)
