"""Server mode against misbehaving servers: a tiny http.server on 127.0.0.1 that answers 500,
hangs, or rejects. No vLLM needed: the client is plain HTTP."""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time

import pytest

from lm_eval_ext.errors import UserError
from lm_eval_ext.vllm.config import VllmExtConfig
from lm_eval_ext.vllm.server_client import ServerEngine, ServerUnavailableError

SECRET = "sk-test-do-not-leak-1234"


class FakeServer(http.server.ThreadingHTTPServer):
    """Answers every request with ``behaviour`` ("500", "hang", "400" or "ok") and records headers."""

    daemon_threads = True

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.authorizations: list[str | None] = []
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _answer(self) -> None:
        server = self.server
        server.authorizations.append(self.headers.get("Authorization"))
        if server.behaviour == "hang":
            server.release.wait(30)
            return
        if server.behaviour == "ok":
            body = {"data": [{"id": "fake-model", "max_model_len": 128}]}
            status = 200
        else:
            status = int(server.behaviour)
            body = {"error": "overloaded" if status >= 500 else "bad prompt"}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _answer
    do_POST = _answer


@pytest.fixture
def fake_server(request):
    server = FakeServer(request.param)
    yield server
    server.stop()


def _config(server: FakeServer, **args) -> VllmExtConfig:
    return VllmExtConfig.from_model_args(
        {"pretrained": "unused", "base_url": server.base_url, "backoff_s": 0.05, **args}
    )


@pytest.mark.parametrize("fake_server", ["500"], indirect=True)
def test_5xx_is_retried_with_backoff_then_named_in_the_error(fake_server, monkeypatch, caplog):
    monkeypatch.setenv("LM_EVAL_EXT_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    started_s = time.monotonic()
    with pytest.raises(ServerUnavailableError) as failure:
        ServerEngine.from_config(_config(fake_server, max_retries=3))
    elapsed_s = time.monotonic() - started_s
    message = str(failure.value)
    assert fake_server.base_url in message and "after 4 attempts" in message and "HTTP 500" in message
    assert "overloaded" in message and "vllm serve" in message
    assert len(fake_server.authorizations) == 4
    # backoff 0.05 * (1 + 2 + 4) s, each times a jitter factor >= 0.5
    assert elapsed_s >= 0.5 * 0.05 * 7
    assert caplog.text.count("retry") == 3
    assert fake_server.authorizations[0] == f"Bearer {SECRET}"
    assert SECRET not in caplog.text and SECRET not in message


@pytest.mark.parametrize("fake_server", ["hang"], indirect=True)
def test_a_hanging_server_times_out_then_fails_clearly(fake_server):
    with pytest.raises(ServerUnavailableError, match=r"after 2 attempts; last failure: (ReadTimeout|ConnectionError)"):
        ServerEngine.from_config(_config(fake_server, max_retries=1, timeout_s=0.3))
    assert len(fake_server.authorizations) == 2


@pytest.mark.parametrize("fake_server", ["400"], indirect=True)
def test_a_4xx_is_not_retried(fake_server):
    with pytest.raises(UserError, match=r"rejected GET /models: HTTP 400: .*bad prompt") as failure:
        ServerEngine.from_config(_config(fake_server, max_retries=5))
    assert not isinstance(failure.value, ServerUnavailableError)
    assert len(fake_server.authorizations) == 1


@pytest.mark.parametrize("fake_server", ["ok"], indirect=True)
def test_api_key_falls_back_to_openai_variable_and_unknown_model_is_refused(fake_server, monkeypatch):
    monkeypatch.delenv("LM_EVAL_EXT_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    engine = ServerEngine.from_config(_config(fake_server))
    assert (engine.model, engine.max_model_len) == ("fake-model", 128)
    assert fake_server.authorizations == [f"Bearer {SECRET}"]
    assert SECRET not in repr(engine)
    with pytest.raises(UserError, match="served_model_name='other' is not served by .*; it serves: fake-model"):
        ServerEngine.from_config(_config(fake_server, served_model_name="other"))


def test_a_server_that_is_not_there_fails_after_retries():
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = VllmExtConfig.from_model_args(
        {"pretrained": "unused", "base_url": f"http://127.0.0.1:{port}/v1", "backoff_s": 0.01, "max_retries": 2}
    )
    with pytest.raises(ServerUnavailableError, match=rf"127.0.0.1:{port}/v1 .* after 3 attempts; last failure: ConnectionError"):
        ServerEngine.from_config(config)
