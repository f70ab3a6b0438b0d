"""The forward-ceiling measurement's arithmetic: shapes parsed as written, and the engine-vs-ceiling row
counting what the engine computed (each family's prefix once) and its distinct scored positions; the
batch capture restores the engine; the engine-ceiling scenario says in one line that data is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.lib import ceiling, real_tasks
from benchmarks.lib.scenarios import Context, Skip
from benchmarks.lib.suites import SUITES
from benchmarks.scenarios.ceiling import engine_ceiling, replay_tasks
from lm_eval_ext.hf.policy.batching import Batch, ScoreRequest, pack_rows


@pytest.mark.parametrize("text, shape", [("32x45", (32, 45, 0)), ("64x65+330", (64, 65, 330))])
def test_shapes_parse_with_an_optional_prefix(text, shape):
    assert ceiling.parse_shape(text) == shape


def test_engine_row_counts_prefix_once_and_shared_positions_once():
    pytest.importorskip("torch")
    # one item: context [1, 2, 3] with choices [4] and [5, 6]; both choices' first tokens are
    # predicted by the context's last node
    item = [ScoreRequest(0, (1, 2, 3), (4,)), ScoreRequest(1, (1, 2, 3, 5), (5, 6))]
    rows = pack_rows(item, row_tokens=64, share=True)
    prefix = tuple(range(100, 110))
    batches = [Batch(rows, prefix), Batch(rows, prefix), Batch(rows)]
    line = ceiling.summarise("t", batches, [(2.0, 1.0, 0.5), (4.0, 2.0, 1.0), (3.0, 1.2, 0.3)])
    fields = line.split()
    # batches, computed (3 x 4 row nodes + 10 prefix tokens once), padded, prefixes, scored, positions
    assert fields[1:7] == ["3", "22", "22", "1", "9", "6"]
    assert fields[7:10] == ["11", "22", "17"]  # 22 tokens over the fastest round of each side: 2.0, 1.0, 1.0 + 0.3 s
    assert fields[10:] == ["50.0%", "75.0%"]  # medians of 1/2, 2/4, 1.2/3 and of 1.5/2, 3/4, 1.5/3


class _Engine:
    def score_batch(self, batch):
        if batch == "bad":
            raise RuntimeError("boom")
        return {0: (-1.0, True)}


def test_capture_records_batches_and_restores_the_engine_even_on_failure():
    engine = _Engine()
    with ceiling.capture_scored_batches(engine) as scored:
        engine.score_batch("a")
    assert scored == ["a"] and "score_batch" not in vars(engine)
    with pytest.raises(RuntimeError, match="boom"), ceiling.capture_scored_batches(engine) as scored:
        engine.score_batch("bad")
    assert scored == ["bad"] and "score_batch" not in vars(engine)


def test_replay_tasks_spell_mmlu_as_its_subjects():
    assert replay_tasks("arc_easy_local,mmlu", ("anatomy",)) == {
        "arc_easy_local": ["arc_easy_local"], "mmlu": [real_tasks.mmlu_task("anatomy")]}


def test_missing_data_is_one_line_skip(tmp_path):
    ctx = Context(suite=SUITES["dev"], work_dir=tmp_path, model_path=Path("unused"),
                  machine={"gpus": [], "usable_cpu_cores": 2}, data_dir=tmp_path / "nowhere")
    with pytest.raises(Skip) as skip:
        engine_ceiling(ctx)
    assert str(skip.value) == real_tasks.MISSING and "\n" not in str(skip.value)
