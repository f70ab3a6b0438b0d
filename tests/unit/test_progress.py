"""The engine's progress bar honours TQDM_DISABLE as well as lm-eval's disable_tqdm."""

from __future__ import annotations

import pytest

from lm_eval_ext.hf.progress import CallProgress


@pytest.mark.parametrize("env, disable, shown", [
    ("", False, True), ("1", False, False), ("true", False, False), ("0", False, True), ("", True, False),
])
def test_bar_is_disabled_by_env_or_argument(monkeypatch, capsys, env, disable, shown):
    monkeypatch.setenv("TQDM_DISABLE", env)
    progress = CallProgress("loglikelihood", 4, disable=disable)
    progress.update(4, 100)
    progress.close()
    assert ("hf_ext loglikelihood" in capsys.readouterr().err) is shown
