"""The plugin registers itself with lm-eval at interpreter start, cheaply and without torch."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from lm_eval_ext.compat import require
from lm_eval_ext.registry import MODEL_TARGETS


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_pth_hook_is_installed_in_site_packages():
    pth = Path(sysconfig.get_paths()["purelib"]) / "lm_eval_ext_hook.pth"
    assert pth.read_text().strip() == "import lm_eval_ext._hook"


def test_hook_alone_imports_neither_torch_nor_lm_eval():
    loaded = json.loads(_python(
        "import sys, json; print(json.dumps([m in sys.modules for m in ('lm_eval_ext._hook', 'torch', 'lm_eval')]))"
    ))
    assert loaded == [True, False, False]


def test_get_model_resolves_ours_and_keeps_builtins():
    out = _python(
        "from lm_eval.api.registry import get_model\n"
        "print(get_model('hf_ext').__module__, get_model('hf').__name__, get_model('dummy').__name__)"
    )
    assert out.split() == ["lm_eval_ext.hf.entry", "HFLM", "DummyLM"]


def test_vllm_ext_resolves_or_names_the_extra():
    """With vLLM installed the name resolves to our class; without, the error names the extra."""
    out = _python(
        "from lm_eval.api.registry import get_model\n"
        "try:\n    print(get_model('vllm_ext').__module__)\n"
        "except ImportError as exc:\n    print('ImportError', exc)"
    )
    assert out == "lm_eval_ext.vllm.adapter" or (
        out.startswith("ImportError") and "pip install 'lm-eval-ext[vllm]'" in out
    ), out


def test_entry_points_match_the_registry():
    declared = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="lm_eval.models")}
    assert {k: declared.get(k) for k in MODEL_TARGETS} == MODEL_TARGETS


def test_register_models_is_idempotent():
    from lm_eval_ext.registry import register_models

    register_models()
    assert register_models() == []


def test_missing_backend_names_the_pip_extra():
    with pytest.raises(ImportError, match=r"pip install 'lm-eval-ext\[vllm\]'"):
        require("surely_not_an_installed_module", "vllm")
