"""hf_ext with the request cache: weights load only when needed; the fingerprint ignores layout."""

from __future__ import annotations

import pytest
import torch

from lm_eval_ext.cache.fingerprint import fingerprint


def build(tiny_model_path, tmp_path, **extra):
    from lm_eval_ext.hf.adapter import HfExtLM

    return HfExtLM(pretrained=str(tiny_model_path), cache_dir=str(tmp_path), **extra)


def test_weights_wait_until_someone_needs_them(tiny_model_path, tmp_path):
    lm = build(tiny_model_path, tmp_path)
    assert not lm.model_loaded
    assert lm.max_length == 1024  # answered from the config
    lm.request_cache.identity()
    assert not lm.model_loaded
    lm._model.to(torch.device("cpu"))  # what HFLM.__init__ does on a GPU machine; replayed at load
    assert lm._model.moved_to == torch.device("cpu") and not lm.model_loaded
    assert lm.model.dtype == torch.float32 and not lm.model.training  # reading the model loads it
    assert lm.model_loaded and isinstance(lm.model, torch.nn.Module)


def test_cache_off_loads_at_construction(tiny_model_path, tmp_path):
    assert build(tiny_model_path, tmp_path, cache="off").model_loaded


def test_fingerprint_ignores_batching_but_not_what_changes_outputs(tiny_model_path, tmp_path):
    def fp(**extra):
        return fingerprint(build(tiny_model_path, tmp_path, **extra).request_cache.identity())

    base = fp()
    assert fp(batch_size=8, cache="off") == base
    assert fp(max_length=512) != base
    assert fp(dtype="bfloat16") != base
    assert fp(add_bos_token=True) != base


def test_verify_recomputes_a_sample_and_reports_a_tampered_entry(tiny_model_path, tmp_path):
    import random
    import sqlite3

    from lm_eval.api.instance import Instance

    from lm_eval_ext.cache.store import DB_FILE, RequestStore
    from lm_eval_ext.commands.cache_verify import recompute_sample

    lm = build(tiny_model_path, tmp_path, batch_size=4)
    lm.loglikelihood([Instance("loglikelihood", {}, (f"Question: {n} plus {n}?\nAnswer:", " two"), n)
                      for n in range(6)])
    lm.generate_until([Instance("generate_until", {}, ("Words: a b c\nCopy:", {"until": ["\n"], "max_gen_toks": 6}), 0)])
    with sqlite3.connect(tmp_path / DB_FILE) as db:
        db.execute("UPDATE entries SET value_json = '[-0.5, false]' WHERE rowid = (SELECT MIN(rowid) FROM entries"
                   " WHERE request_type = 'loglikelihood')")
    lines = []
    store = RequestStore.open(tmp_path)
    model_args = f"pretrained={tiny_model_path},cache_dir={tmp_path}"
    # exactly one mismatch: the six untouched entries (generation included) recompute equal
    assert recompute_sample(store, model_args, 7, random.Random(0), lines.append) == 1
    assert lines[0].startswith("MISMATCH loglikelihood") and "cached (-0.5, False)" in lines[0]
    assert lines[-1] == "recompute: 7 of 7 entries checked, 1 mismatches"


def test_rolling_documents_are_stored_as_their_batches_finish(tiny_model_path, tmp_path, monkeypatch):
    """A rolling document is stored when its last window's batch finishes (was: HFLM reported rolling
    results only when its call returned, so documents went over in chunks): Ctrl-C in the fourth
    batch keeps the three documents already scored, and the rerun computes only the rest, with
    equal values."""
    from lm_eval.api.instance import Instance

    from lm_eval_ext.errors import RunInterrupted

    texts = [f"Paragraph {n}: " + " ".join(f"word{n * k % 17}" for k in range(40)) for n in range(7)]
    requests = [Instance("loglikelihood_rolling", {}, (text,), n) for n, text in enumerate(texts)]
    undisturbed = build(tiny_model_path, tmp_path / "clean", batch_size=4).loglikelihood_rolling(requests)

    lm = build(tiny_model_path, tmp_path / "run", max_batch_tokens="off")  # batch_size=1: a window per batch
    lm.load_weights()
    real, batches = lm.engine.score_batch, []

    def fourth_batch_dies(batch):
        batches.append(batch.num_requests)
        if len(batches) == 4:
            raise KeyboardInterrupt("killed in the fourth batch")
        return real(batch)

    monkeypatch.setattr(lm.engine, "score_batch", fourth_batch_dies)
    with pytest.raises(RunInterrupted, match=r"^interrupted after 3 of 7 requests; 3 are in the request cache; "
                                             "rerun the same command to resume$"):
        lm.loglikelihood_rolling(requests)  # Ctrl-C becomes one line saying what is kept (issue 16)
    assert batches == [1, 1, 1, 1]  # one window per document: three finished documents
    resumed = build(tiny_model_path, tmp_path / "run", batch_size=4)
    values = resumed.loglikelihood_rolling(requests)
    counters = resumed.request_cache_report()["totals"]
    assert (counters["hits"], counters["misses"]) == (3, 4)
    assert all(abs(a - b) <= 1e-6 * abs(a) for a, b in zip(values, undisturbed, strict=True))
