"""The real-tasks benchmark: its task YAMLs load through lm-eval's TaskManager over ../shared/data
(skipped when the data is absent), its configurations use hf_ext's defaults, and it is in the suites."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.lib import real_tasks
from benchmarks.lib.compare import EXT
from benchmarks.lib.suites import SUITES
from benchmarks.scenarios import real as bench

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")


def test_hf_ext_runs_with_only_its_defaults_and_stock_with_fixed_sizes():
    configs = bench.configurations(real_tasks.ARC, (1, 8))
    assert configs[EXT] == {"backend": "hf_ext", "cache": "off"}
    assert [c["batch_size"] for n, c in configs.items() if n.startswith("hf ")] == list(bench.STOCK_SIZES)
    gen = bench.configurations(real_tasks.GSM8K, (1, 8))
    assert [c["batch_size"] for n, c in gen.items() if n.startswith("hf ")] == [1, 8]
    assert bench.ONE_ROW not in gen
    assert bench.ONE_ROW not in bench.configurations(real_tasks.ARC, (1,), one_row=False)


def test_real_tasks_is_in_the_cpu_suites_with_limits():
    for name in ("cpu-quick", "cpu-full"):
        assert "real-tasks" in SUITES[name].scenarios
        assert SUITES[name].limit("real-tasks-arc")
    assert SUITES["cpu-full"].limit("real-tasks-gsm8k")
    assert SUITES["cpu-quick"].limit("real-tasks-gsm8k") == 0  # the gsm8k scenario measures it there
    assert SUITES["cpu-quick"].limit("real-tasks-wikitext") == 0  # cpu-full has it; hf-suite a rolling row
    assert "gsm8k" in SUITES["cpu-quick"].scenarios
    assert "real-tasks" not in SUITES["gpu"].scenarios


def test_limit_keys_name_every_task():
    assert [real_tasks.short_name(t) for t in bench.task_names(2)] == ["arc", "mmlu", "mmlu", "lambada", "wikitext", "gsm8k"]


@pytest.mark.skipif(not real_tasks.available(DATA), reason="../shared/data not present")
def test_task_yamls_load_with_lm_evals_own_prompts(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lm_eval.tasks import TaskManager, get_task_dict

    include = real_tasks.write_tasks(DATA, tmp_path)
    manager = TaskManager(include_path=[str(include)], include_defaults=False)
    names = [real_tasks.ARC, real_tasks.mmlu_task("anatomy"), real_tasks.LAMBADA, real_tasks.WIKITEXT]
    tasks = get_task_dict(names, manager)
    arc = tasks[real_tasks.ARC]
    doc = next(iter(arc.test_docs()))
    assert arc.doc_to_text(doc) == f"Question: {doc['question']}\nAnswer:"
    mmlu = tasks[real_tasks.mmlu_task("anatomy")]
    assert mmlu.config.fewshot_config.sampler == "first_n" and mmlu.config.fewshot_split == "dev"
    assert tasks[real_tasks.WIKITEXT].config.output_type == "loglikelihood_rolling"
    assert tasks[real_tasks.LAMBADA].config.output_type == "loglikelihood"


def test_options_resolve_command_line_then_suite_then_default(tmp_path):
    from benchmarks.lib.scenarios import Context

    def ctx(**options):
        return Context(suite=SUITES["cpu-quick"], work_dir=tmp_path, model_path=tmp_path, machine={}, data_dir=None,
                       options=options, scenario="real-tasks")

    quick = ctx()
    assert quick.sizes("stock_sizes", bench.STOCK_SIZES) == (8, 16)
    assert quick.sizes("mmlu_sizes", (8, 16)) == (1, 8)
    assert quick.sizes("generation_sizes", bench.GENERATION_SIZES) == bench.GENERATION_SIZES
    assert quick.limit("real-tasks", "mmlu") == 8 and quick.limit("real-tasks", "nothing", default=3) == 3
    given = ctx(stock_sizes="32", limit={"": 5, "arc": 200})
    assert given.sizes("stock_sizes", bench.STOCK_SIZES) == (32,)
    assert given.limit("real-tasks", "arc") == 200 and given.limit("real-tasks", "mmlu") == 5
