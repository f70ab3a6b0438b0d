"""Server mode against a real ``vllm serve`` started here on 127.0.0.1 (stopped by its PID)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from tests.vllm.evaluation import differences, evaluate_samples
from tests.vllm.support import ROOT, free_port, requires_vllm, start_vllm_server, stop_server

pytestmark = [pytest.mark.vllm, requires_vllm]

SERVER_LOG = ROOT / ".scratch" / "vllm-serve.log"  # kept after the run for diagnosis (git-ignored)


@dataclass
class ServerHandle:
    port: int
    process: Any  # the running `vllm serve`; replaced when a test restarts it


@pytest.fixture(scope="module")
def vllm_server(tiny_vllm_model_path):
    port = free_port()
    handle = ServerHandle(port, start_vllm_server(tiny_vllm_model_path, port, SERVER_LOG))
    yield handle
    stop_server(handle.process)
    assert handle.process.returncode is not None


def _server_lm(model_path: str, port: int, **args):
    from lm_eval_ext.adapters.vllm import VllmExtLM

    return VllmExtLM(pretrained=model_path, base_url=f"http://127.0.0.1:{port}/v1", **args)


def test_server_mode_equals_stock(stock_samples, vllm_server, tiny_vllm_model_path, task_manager):
    lm = _server_lm(tiny_vllm_model_path, vllm_server.port, num_concurrent=2, tokens_per_request=2048)
    samples = evaluate_samples(lm, task_manager)
    assert differences(stock_samples, samples) == []
    info = lm.get_model_info()
    assert info["vllm_mode"] == "server" and info["engine_starts"] == 0
    assert lm._engine.num_http_requests > 3  # packed by the token budget, not one request per sample


def _restart_when(engine, handle: ServerHandle, model_path, after_requests: int, restarted: threading.Event):
    """Kill the server once ``after_requests`` HTTP requests have been answered, then start it again."""
    while engine.num_http_requests < after_requests:
        time.sleep(0.05)
    stop_server(handle.process)
    handle.process = start_vllm_server(model_path, handle.port, SERVER_LOG)
    restarted.set()


def test_server_killed_midrun_and_restarted_completes_through_retries(
    stock_samples, vllm_server, tiny_vllm_model_path, task_manager, caplog
):
    # small requests, one at a time: the run is still going when the server dies; the retries
    # (0.5 s doubling to 5 s, 100 of them) outlast a restart of vllm serve on a loaded machine.
    lm = _server_lm(tiny_vllm_model_path, vllm_server.port, num_concurrent=1, tokens_per_request=256,
                    max_retries=100, backoff_s=0.5, max_backoff_s=5, timeout_s=60)
    restarted = threading.Event()
    killer = threading.Thread(target=_restart_when, args=(lm._engine, vllm_server, tiny_vllm_model_path, 3, restarted))
    killer.start()
    caplog.set_level(logging.WARNING, logger="lm_eval_ext.vllm")
    try:
        samples = evaluate_samples(lm, task_manager)
    finally:
        killer.join()
    assert restarted.is_set()
    assert "retry 1/100" in caplog.text
    assert differences(stock_samples, samples) == []
