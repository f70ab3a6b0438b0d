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
    from lm_eval_ext.vllm.adapter import VllmExtLM

    return VllmExtLM(pretrained=model_path, base_url=f"http://127.0.0.1:{port}/v1", **args)


def test_server_mode_equals_stock(stock_samples, vllm_server, tiny_vllm_model_path, task_manager):
    lm = _server_lm(tiny_vllm_model_path, vllm_server.port, num_concurrent=2, tokens_per_request=2048)
    samples = evaluate_samples(lm, task_manager)
    assert differences(stock_samples, samples) == []
    info = lm.get_model_info()
    assert info["vllm_mode"] == "server" and info["engine_starts"] == 0
    assert lm.engine.num_http_requests > 3  # packed by the token budget, not one request per sample


def _stored_keys(cache_dir) -> set[str]:
    """Keys in the request cache right now (a second connection: sees every committed batch)."""
    import sqlite3

    from lm_eval_ext.cache.store import DB_FILE

    if not (cache_dir / DB_FILE).exists():
        return set()
    with sqlite3.connect(cache_dir / DB_FILE) as db:
        return {key for (key,) in db.execute("SELECT key FROM entries")}


def _hit_keys(cache_dir) -> dict[str, int]:
    import sqlite3

    from lm_eval_ext.cache.store import DB_FILE

    with sqlite3.connect(cache_dir / DB_FILE) as db:
        return dict(db.execute("SELECT key, hits FROM entries WHERE hits > 0"))


def _kill_when(engine, handle: ServerHandle, after_requests: int, restart_model_path: str | None,
               at_kill: dict, done: threading.Event, cache_dir):
    """Stop the server once ``after_requests`` HTTP requests have been answered; note what the
    cache held then; start the server again if ``restart_model_path`` is given."""
    while engine.num_http_requests < after_requests:
        time.sleep(0.05)
    stop_server(handle.process)
    at_kill["stored"] = _stored_keys(cache_dir)
    if restart_model_path:
        handle.process = start_vllm_server(restart_model_path, handle.port, SERVER_LOG)
    done.set()


def _rerun_from_cache(model_path: str, port: int, cache_dir, task_manager):
    lm = _server_lm(model_path, port, cache_dir=str(cache_dir), num_concurrent=2, tokens_per_request=2048)
    samples = evaluate_samples(lm, task_manager)
    return samples, lm.request_cache_report()["totals"]


def test_server_killed_midrun_and_restarted_completes_through_retries(
    stock_samples, vllm_server, tiny_vllm_model_path, task_manager, caplog, tmp_path
):
    # small requests, one at a time: the run is still going when the server dies; the retries
    # (0.5 s doubling to 5 s, 100 of them) outlast a restart of vllm serve on a loaded machine.
    lm = _server_lm(tiny_vllm_model_path, vllm_server.port, num_concurrent=1, tokens_per_request=256,
                    max_retries=100, backoff_s=0.5, max_backoff_s=5, timeout_s=60, cache_dir=str(tmp_path))
    at_kill, restarted = {}, threading.Event()
    killer = threading.Thread(target=_kill_when, args=(lm.engine, vllm_server, 3, tiny_vllm_model_path, at_kill,
                                                       restarted, tmp_path))
    killer.start()
    caplog.set_level(logging.WARNING, logger="lm_eval_ext.vllm")
    try:
        samples = evaluate_samples(lm, task_manager)
    finally:
        killer.join()
    assert restarted.is_set()
    assert "retry 1/100" in caplog.text
    assert differences(stock_samples, samples) == []
    # results were stored as responses arrived: some before the kill, the rest after the restart
    assert 0 < len(at_kill["stored"]) < len(_stored_keys(tmp_path))
    rerun, totals = _rerun_from_cache(tiny_vllm_model_path, vllm_server.port, tmp_path, task_manager)
    assert totals["misses"] == 0 and totals["hits"] > 0
    assert rerun == samples


def test_run_failing_on_a_dead_server_resumes_from_the_cache(
    stock_samples, vllm_server, tiny_vllm_model_path, task_manager, tmp_path
):
    from lm_eval_ext.vllm.server_client import ServerUnavailableError

    lm = _server_lm(tiny_vllm_model_path, vllm_server.port, num_concurrent=1, tokens_per_request=256,
                    max_retries=2, backoff_s=0.1, timeout_s=30, cache_dir=str(tmp_path))
    at_kill, killed = {}, threading.Event()
    killer = threading.Thread(target=_kill_when, args=(lm.engine, vllm_server, 4, None, at_kill, killed, tmp_path))
    killer.start()
    try:
        with pytest.raises(ServerUnavailableError, match=rf"vLLM server {lm.ext_config.base_url} did not answer"):
            evaluate_samples(lm, task_manager)
    finally:
        killer.join()
    stored = _stored_keys(tmp_path)  # everything that had arrived before the server died
    assert stored and killed.is_set()
    vllm_server.process = start_vllm_server(tiny_vllm_model_path, vllm_server.port, SERVER_LOG)
    samples, totals = _rerun_from_cache(tiny_vllm_model_path, vllm_server.port, tmp_path, task_manager)
    assert differences(stock_samples, samples) == []
    hits = _hit_keys(tmp_path)
    # every stored request was answered from the cache, and only those: the rest was computed
    assert set(hits) == stored and sum(hits.values()) == totals["hits"]
    assert totals["misses"] > 0 and len(_stored_keys(tmp_path)) > len(stored)
