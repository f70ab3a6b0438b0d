"""One progress bar per request type: hf_ext's own (requests/s, tokens/s), none of HFLM's
(``Tokenizing inputs``, ``Running ... requests``), and none at all under ``TQDM_DISABLE``."""

from __future__ import annotations

import re

import pytest

from tests.adapters.conftest import evaluate

pytestmark = pytest.mark.slow

KINDS = ("loglikelihood", "loglikelihood_rolling", "generate_until")


def bars_started(text: str) -> dict[str, int]:
    """How many bars of each kind were drawn: a bar's first draw has no postfix yet (``?req/s]``);
    a bar may be redrawn at 0% with its tokens/s while the first generations decode."""
    return {kind: len(re.findall(rf"hf_ext {kind}:\s+0%[^\r\n]*?\?req/s\]", text)) for kind in KINDS}


@pytest.mark.parametrize(("disabled", "cache", "limit"), [(False, "off", 6), (True, "off", 6), (False, None, 12)])
def test_one_bar_per_request_type(tiny_model_path, capfd, monkeypatch, disabled, cache, limit):
    from lm_eval_ext.hf.adapter import HfExtLM

    monkeypatch.setenv("TQDM_DISABLE", "1" if disabled else "")
    lm = HfExtLM(pretrained=tiny_model_path, device="cpu", **({"cache": cache} if cache else {}))
    capfd.readouterr()
    evaluate(lm, limit=limit)
    err = capfd.readouterr().err
    assert "Tokenizing inputs" not in err and "Running loglikelihood" not in err
    assert "Running generate_until" not in err
    if disabled:
        assert bars_started(err) == dict.fromkeys(KINDS, 0)
    else:
        assert bars_started(err) == dict.fromkeys(KINDS, 1), err[-2000:]
        assert "req/s" in err and "tok/s" in err
