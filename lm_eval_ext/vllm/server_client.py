"""EDGE: ``vllm_ext`` as a client of a running OpenAI-compatible vLLM server (``vllm serve``).

Prompts travel as token-id lists, so the server scores exactly the tokens lm-eval built.
Loglikelihoods: ``/v1/completions`` with ``echo`` + ``logprobs=1`` + ``max_tokens=1`` and
``return_tokens_as_token_ids`` (vLLM's extension: top-logprob keys ``"token_id:N"`` instead of
strings, which would be ambiguous). Generation: ``/v1/completions`` with the sampling fields of
the request. Requests with equal parameters are packed into HTTP requests of at most
``tokens_per_request`` prompt tokens; at most ``num_concurrent`` are in flight; timeouts,
connection errors and 5xx are retried with exponential backoff and jitter; after ``max_retries``
a :class:`ServerUnavailableError` names the server and the last failure. The bearer token comes
from an environment variable and is never logged or stored in a result.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass, field
from typing import Any

import requests

from lm_eval_ext.errors import UserError
from lm_eval_ext.vllm.config import VllmExtConfig
from lm_eval_ext.vllm.engines import EngineOutput, GeneratedText, collect

logger = logging.getLogger(__name__)

#: SamplingParams fields forwarded for generation (vLLM's completions API accepts each by this name).
_GENERATION_FIELDS = (
    "temperature", "top_p", "top_k", "min_p", "seed", "stop", "max_tokens", "min_tokens",
    "presence_penalty", "frequency_penalty", "repetition_penalty", "skip_special_tokens",
    "spaces_between_special_tokens", "include_stop_str_in_output", "ignore_eos",
)


class ServerUnavailableError(UserError):
    """The server did not answer after every retry."""


class UnexpectedAnswerError(UserError):
    """The server answered, but not as an OpenAI-compatible vLLM server does; nothing of it is cached."""


def unexpected_answer(base_url: str, method: str, path: str, text: str) -> UnexpectedAnswerError:
    return UnexpectedAnswerError(
        f"vLLM server {base_url} returned an unexpected answer to {method} {path} (first 200 chars: "
        f"{text[:200]!r}); is it an OpenAI-compatible vLLM server?"
    )


#: what a malformed but well-formed-JSON answer raises while it is read
_SHAPE_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError)


def backoff_delay_s(attempt: int, backoff_s: float, max_backoff_s: float, rng: random.Random) -> float:
    """Delay before retry ``attempt`` (0-based): ``backoff_s * 2**attempt``, at most ``max_backoff_s``,
    times a jitter factor in [0.5, 1.5) so that clients that failed together do not retry together."""
    return min(backoff_s * 2**attempt, max_backoff_s) * rng.uniform(0.5, 1.5)


def request_fields(params: Any) -> dict:
    """The completions-API fields for one ``SamplingParams`` (without model and prompt)."""
    if params.prompt_logprobs is not None:
        return {"max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1, "return_tokens_as_token_ids": True}
    fields = {name: getattr(params, name) for name in _GENERATION_FIELDS if getattr(params, name, None) is not None}
    fields["stop"] = list(fields.get("stop") or [])
    return fields


def pack_by_tokens(prompts: Sequence[Sequence[int]], keys: Sequence[str], tokens_per_request: int) -> list[list[int]]:
    """Indices per HTTP request: equal ``keys`` only, at most ``tokens_per_request`` prompt tokens
    each (a longer prompt goes alone). Order is kept within a key, so an item's choices stay together."""
    batches: list[list[int]] = []
    open_batch: dict[str, tuple[list[int], int]] = {}
    for index, key in enumerate(keys):
        members, tokens = open_batch.get(key, ([], 0))
        if members and tokens + len(prompts[index]) > tokens_per_request:
            batches.append(members)
            members, tokens = [], 0
        open_batch[key] = (members + [index], tokens + len(prompts[index]))
    batches.extend(members for members, _ in open_batch.values() if members)
    return batches


def parse_echo_logprobs(prompt: Sequence[int], choice: dict) -> EngineOutput:
    """One echoed choice -> prompt_logprobs ``[None, {token_id: logprob}, ...]`` like vLLM's."""
    logprobs = choice["logprobs"]
    positions: list[dict[int, float] | None] = [None]
    for i in range(1, len(prompt)):
        top = logprobs["top_logprobs"][i] or {}
        entry = {int(key.rsplit(":", 1)[1]): float(value) for key, value in top.items()}
        entry[prompt[i]] = float(logprobs["token_logprobs"][i])
        positions.append(entry)
    return EngineOutput(positions)


@dataclass
class ServerEngine:
    base_url: str
    model: str
    max_model_len: int
    num_concurrent: int
    tokens_per_request: int
    max_retries: int
    timeout_s: float
    backoff_s: float
    max_backoff_s: float
    api_key: str | None = field(default=None, repr=False)
    kind: str = "server"
    num_engine_starts: int = 0
    num_http_requests: int = 0  # answered ones; tests watch it to interrupt a run midway
    model_card: dict = field(default_factory=dict)  # the server's /v1/models entry for ``model``
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    @classmethod
    def from_config(cls, config: VllmExtConfig) -> ServerEngine:
        engine = cls(
            base_url=config.base_url, model=config.served_model_name or "", max_model_len=0,
            num_concurrent=config.num_concurrent, tokens_per_request=config.tokens_per_request,
            max_retries=config.max_retries, timeout_s=config.timeout_s, backoff_s=config.backoff_s,
            max_backoff_s=config.max_backoff_s,
            api_key=os.environ.get(config.api_key_env) or os.environ.get("OPENAI_API_KEY"),
        )
        engine._discover_model()
        return engine

    def _discover_model(self) -> None:
        body = self.call("GET", "/models")
        try:
            models = [m for m in body["data"] if isinstance(m["id"], str)]
            chosen = next((m for m in models if m["id"] == self.model), None) if self.model else models[0]
        except _SHAPE_ERRORS:
            raise unexpected_answer(self.base_url, "GET", "/models", json.dumps(body)) from None
        if chosen is None:
            served = ", ".join(m["id"] for m in models)
            raise UserError(f"served_model_name={self.model!r} is not served by {self.base_url}; it serves: {served}")
        self.model, self.model_card = chosen["id"], dict(chosen)
        self.max_model_len = int(chosen.get("max_model_len") or 0)
        logger.info("vllm_ext: server %s serves %s (max_model_len=%d)", self.base_url, self.model, self.max_model_len)

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):  # requests.Session is not thread-safe: one per thread
            self._local.session = requests.Session()
        return self._local.session

    def call(self, method: str, path: str, payload: dict | None = None) -> dict:
        """One API call with retries on timeouts, connection errors and 5xx; 4xx fail at once."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last_failure = "none"
        for attempt in range(self.max_retries + 1):
            try:
                response = self._session().request(
                    method, self.base_url + path, json=payload, headers=headers, timeout=self.timeout_s
                )
            except (requests.Timeout, requests.ConnectionError) as exc:
                last_failure = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError:  # requests' JSONDecodeError is a ValueError
                        raise unexpected_answer(self.base_url, method, path, response.text) from None
                if response.status_code < 500:
                    raise UserError(
                        f"vLLM server {self.base_url} rejected {method} {path}: HTTP {response.status_code}: "
                        f"{response.text[:300]}"
                    )
                last_failure = f"HTTP {response.status_code}: {response.text[:200]}"
            if attempt < self.max_retries:
                delay_s = backoff_delay_s(attempt, self.backoff_s, self.max_backoff_s, self._rng)
                logger.warning("vllm_ext: %s %s%s failed (%s); retry %d/%d in %.1f s", method, self.base_url,
                               path, last_failure, attempt + 1, self.max_retries, delay_s)
                time.sleep(delay_s)
        raise ServerUnavailableError(
            f"vLLM server {self.base_url} did not answer {method} {path} after {self.max_retries + 1} attempts; "
            f"last failure: {last_failure}. Check that `vllm serve` is running there, or raise max_retries / timeout_s"
        )

    def _complete(self, prompts: list[list[int]], fields: dict) -> list[EngineOutput]:
        body = self.call("POST", "/completions", {"model": self.model, "prompt": prompts, **fields})
        try:
            outputs = self._read_choices(body, prompts, bool(fields.get("echo")))
        except _SHAPE_ERRORS:
            raise unexpected_answer(self.base_url, "POST", "/completions", json.dumps(body)) from None
        self.num_http_requests += 1
        return outputs

    @staticmethod
    def _read_choices(body: dict, prompts: list[list[int]], echo: bool) -> list[EngineOutput]:
        """Every prompt's output, or a shape error: a missing choice must not pass as a shorter batch."""
        choices = sorted(body["choices"], key=lambda c: c["index"])
        if [c["index"] for c in choices] != list(range(len(prompts))):
            raise ValueError(f"{len(choices)} choices for {len(prompts)} prompts")
        if echo:
            return [parse_echo_logprobs(p, c) for p, c in zip(prompts, choices)]
        texts = [c["text"] or "" for c in choices]
        if not all(isinstance(text, str) for text in texts):
            raise TypeError("a choice's text is not a string")
        return [EngineOutput(None, (GeneratedText(text),)) for text in texts]

    def iter_batches(
        self, prompts: Sequence[list[int]], params: Sequence[Any], group_keys: Sequence[Hashable] | None = None,
        costs_tokens: Sequence[int] | None = None,
    ) -> Iterator[list[tuple[int, EngineOutput]]]:
        """Yield one ``[(index, output), ...]`` per HTTP response, in completion order, with at most
        ``num_concurrent`` calls in flight (``group_keys`` and ``costs_tokens``: one server, unused)."""
        fields = [request_fields(p) for p in params]
        keys = [json.dumps(f, sort_keys=True) for f in fields]
        batches = pack_by_tokens(prompts, keys, self.tokens_per_request)
        pool = ThreadPoolExecutor(max_workers=self.num_concurrent, thread_name_prefix="vllm_ext-http")
        try:
            pending = {pool.submit(self._complete, [list(prompts[i]) for i in b], fields[b[0]]): b for b in batches}
            while pending:
                done, _ = wait_for_futures(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    batch = pending.pop(future)
                    yield list(zip(batch, future.result()))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    #: the completions endpoint cannot ask vLLM to read its prefix cache for prompt logprobs
    supports_prefix_scoring = False
    scores_from_start = False
    block_size = 0

    def run(self, prompts, params, group_keys=None) -> list[EngineOutput]:
        return collect(self.iter_batches(prompts, params, group_keys), len(prompts))

    def close(self) -> None:
        """Nothing to stop: the server is not ours."""
