"""A fake backend for the request-cache mixin: deterministic results, a computed-request counter,
lm-eval's per-result hook called once per result, batches of ``batch_size``. The store is real."""

from __future__ import annotations

import hashlib

from lm_eval.api.instance import Instance
from lm_eval.api.model import CacheHook

from lm_eval_ext.cache.cached_lm import RequestCacheMixin
from lm_eval_ext.cache.fingerprint import ModelIdentity


def fake_value(request_type: str, args: tuple, salt: str = ""):
    digest = hashlib.sha256((salt + repr(args)).encode()).digest()
    number = -int.from_bytes(digest[:8], "big") / 2**57  # full-precision float in [-128, 0)
    if request_type == "loglikelihood":
        return (number, digest[8] % 2 == 0)
    if request_type == "loglikelihood_rolling":
        return number
    return f"gen-{digest[:4].hex()}"


class FakeBackend:
    def __init__(self, salt: str = "", batch_size: int = 4, fail_after_batches: int | None = None):
        self.salt, self.batch_size, self.fail_after_batches = salt, batch_size, fail_after_batches
        self.cache_hook = CacheHook(None)
        self.computed: list[tuple] = []

    def set_cache_hook(self, cache_hook):  # as lm-eval's LM, which CachingLM calls
        self.cache_hook = cache_hook

    def _run(self, request_type, requests):
        results = []
        for start in range(0, len(requests), self.batch_size):
            if self.fail_after_batches is not None and start // self.batch_size >= self.fail_after_batches:
                raise RuntimeError("simulated crash mid-run")
            for request in requests[start : start + self.batch_size]:
                value = fake_value(request_type, request.args, self.salt)
                self.computed.append(request.args)
                self.cache_hook.add_partial(request_type, request.args, value)
                results.append(value)
        return results

    def loglikelihood(self, requests, disable_tqdm=False):
        return self._run("loglikelihood", requests)

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        return self._run("loglikelihood_rolling", requests)

    def generate_until(self, requests, disable_tqdm=False):
        return self._run("generate_until", requests)

    def get_model_info(self):
        return {}


class FakeCachedLM(RequestCacheMixin, FakeBackend):
    def __init__(self, cache_dir, mode="readwrite", salt="", **kwargs):
        self._init_request_cache(mode=mode, cache_dir=str(cache_dir))
        super().__init__(salt=salt, **kwargs)

    def _cache_model_identity(self) -> ModelIdentity:
        return ModelIdentity(backend="fake", model_type="causal", weights="w" + self.salt, revision=None,
                             dtype="float32", tokenizer="t", chat_template=None, max_length=128)

    def _cache_flush_every(self) -> int:
        return self.batch_size


def requests(request_type: str, count: int, task: str = "task_a", offset: int = 0) -> list[Instance]:
    made = []
    for index in range(offset, offset + count):
        if request_type == "loglikelihood":
            args = (f"context {index}", f" cont {index}")
        elif request_type == "loglikelihood_rolling":
            args = (f"document {index}",)
        else:
            args = (f"prompt {index}", {"until": ["\n"], "do_sample": False, "max_gen_toks": 8})
        made.append(Instance(request_type, {}, args, index, metadata=(task, index, 1)))
    return made
