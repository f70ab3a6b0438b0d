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
    from tests.helpers import free_port

    port = free_port()  # nobody listens on it
    config = VllmExtConfig.from_model_args(
        {"pretrained": "unused", "base_url": f"http://127.0.0.1:{port}/v1", "backoff_s": 0.01, "max_retries": 2}
    )
    with pytest.raises(ServerUnavailableError, match=rf"127.0.0.1:{port}/v1 .* after 3 attempts; last failure: ConnectionError"):
        ServerEngine.from_config(config)


# ---------------------------------------------------------------- malformed answers (issue 16)

class ScriptedServer(http.server.ThreadingHTTPServer):
    """Answers 200 with ``models`` to GET /models and with the next of ``completions`` to each POST."""

    daemon_threads = True

    def __init__(self, models: bytes, completions: list[bytes] = ()) -> None:
        self.models, self.completions, self.posts = models, list(completions), 0
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _send(self, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._send(self.server.models)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server = self.server
        server.posts += 1
        self._send(server.completions[min(server.posts, len(server.completions)) - 1])


GOOD_MODELS = json.dumps({"data": [{"id": "fake-model", "max_model_len": 128}]}).encode()


class _Scoring:  # what request_fields reads from a SamplingParams for loglikelihood scoring
    prompt_logprobs = 1


def _echo_answer(prompt: list[int]) -> bytes:
    logprobs = {"token_logprobs": [None] + [-1.0] * (len(prompt) - 1),
                "top_logprobs": [None] + [{f"token_id:{t}": -1.0} for t in prompt[1:]]}
    return json.dumps({"choices": [{"index": 0, "text": "", "logprobs": logprobs}]}).encode()


@pytest.fixture
def scripted():
    servers = []

    def start(models: bytes, completions: list[bytes] = ()) -> ScriptedServer:
        servers.append(ScriptedServer(models, completions))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _engine(server, **args) -> ServerEngine:
    return ServerEngine.from_config(VllmExtConfig.from_model_args(
        {"pretrained": "unused", "base_url": server.base_url, "backoff_s": 0.01, "num_concurrent": 1,
         "tokens_per_request": 3, **args}))


@pytest.mark.parametrize(("models", "shown"), [
    (b"<html>hello</html>", "'<html>hello</html>'"),
    (b'{"foo": 1}', "'{\"foo\": 1}'"),
    (b'{"data": []}', "'{\"data\": []}'"),
])
def test_a_models_answer_that_is_not_vllms_is_one_line_naming_the_server(scripted, models, shown):
    server = scripted(models)
    with pytest.raises(UserError) as failure:
        _engine(server)
    assert str(failure.value) == (
        f"vLLM server {server.base_url} returned an unexpected answer to GET /models (first 200 chars: {shown}); "
        "is it an OpenAI-compatible vLLM server?")


@pytest.mark.parametrize(("answer", "shown"), [
    (b'{"foo": 1}', "'{\"foo\": 1}'"),
    (b"not json at all", "'not json at all'"),
    (b'{"choices": []}', "'{\"choices\": []}'"),
    (b'{"choices": [{"index": 0, "text": "", "logprobs": {"token_logprobs": [null]}}]}', None),
])
def test_a_completions_answer_that_is_not_vllms_is_one_line_and_never_delivered(scripted, answer, shown):
    """The first HTTP request is answered properly and delivered (so the cache stores it); the
    second is garbage: it raises, and nothing of it reaches the caller that writes the cache."""
    prompts = [[1, 2, 3], [4, 5, 6]]  # tokens_per_request=3: one HTTP request each
    server = scripted(GOOD_MODELS, [_echo_answer(prompts[0]), answer])
    engine = _engine(server)
    delivered = []
    with pytest.raises(UserError) as failure:
        for batch in engine.iter_batches(prompts, [_Scoring(), _Scoring()]):
            delivered.extend(batch)
    message = str(failure.value)
    assert message.startswith(f"vLLM server {server.base_url} returned an unexpected answer to POST /completions "
                              "(first 200 chars: ")
    assert message.endswith("); is it an OpenAI-compatible vLLM server?") and "\n" not in message
    if shown:
        assert f"(first 200 chars: {shown})" in message
    assert [index for index, _ in delivered] == [0]
    assert delivered[0][1].prompt_logprobs[1] == {2: -1.0}
    assert server.posts == 2 and engine.num_http_requests == 1


def test_a_long_garbage_answer_is_cut_to_200_characters(scripted):
    server = scripted(b"x" * 5000)
    with pytest.raises(UserError, match=r"\(first 200 chars: 'x{200}'\); is it"):
        _engine(server)
