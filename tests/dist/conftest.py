"""The single-process reference the multi-process launches in this folder are compared with."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.dist.test_cpu_data_parallel import _samples
from tests.dist.test_two_nodes import _env, _lm_eval


@pytest.fixture(scope="session")
def one_process(tiny_model_path, tmp_path_factory):
    """``TASK`` over ``LIMIT`` documents in one process (tests/dist/test_two_nodes.py)."""
    out = tmp_path_factory.mktemp("one")
    env = _env(dict(os.environ))
    env.pop("ACCELERATE_USE_CPU")
    subprocess.run([sys.executable, *_lm_eval(tiny_model_path, out)], check=True, capture_output=True,
                   text=True, timeout=600, env=env)
    return _samples(out)
