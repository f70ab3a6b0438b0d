"""The ceiling benchmarks' arithmetic: shapes parsed as written, and the engine-vs-ceiling row
counting what the engine computed (each family's prefix once) and its distinct scored positions."""

from __future__ import annotations

import pytest

from benchmarks import engine_ceiling, forward_ceiling
from lm_eval_ext.hf.policy.batching import Batch, ScoreRequest, pack_rows


@pytest.mark.parametrize("text, shape", [("32x45", (32, 45, 0)), ("64x65+330", (64, 65, 330))])
def test_shapes_parse_with_an_optional_prefix(text, shape):
    assert forward_ceiling.parse_shape(text) == shape


def test_engine_row_counts_prefix_once_and_shared_positions_once():
    pytest.importorskip("torch")
    # one item: context [1, 2, 3] with choices [4] and [5, 6]; both choices' first tokens are
    # predicted by the context's last node
    item = [ScoreRequest(0, (1, 2, 3), (4,)), ScoreRequest(1, (1, 2, 3, 5), (5, 6))]
    rows = pack_rows(item, row_tokens=64, share=True)
    prefix = tuple(range(100, 110))
    batches = [Batch(rows, prefix), Batch(rows, prefix), Batch(rows)]
    line = engine_ceiling.summarise("t", batches, [(2.0, 1.0, 0.5), (4.0, 2.0, 1.0), (3.0, 1.2, 0.3)])
    fields = line.split()
    # batches, computed (3 x 4 row nodes + 10 prefix tokens once), padded, prefixes, scored, positions
    assert fields[1:7] == ["3", "22", "22", "1", "9", "6"]
    assert fields[7:10] == ["11", "22", "17"]  # 22 tokens over the fastest round of each side: 2.0, 1.0, 1.0 + 0.3 s
    assert fields[10:] == ["50.0%", "75.0%"]  # medians of 1/2, 2/4, 1.2/3 and of 1.5/2, 3/4, 1.5/3


def test_missing_data_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["engine_ceiling.py", "--data", str(tmp_path / "nowhere")])
    assert engine_ceiling.main() == 2
    err = capsys.readouterr().err.strip()
    assert err == "engine_ceiling: no ../shared/data with ARC-Easy and MMLU found; pass --data DIR"
