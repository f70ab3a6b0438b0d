"""A fake backend behind a real request front: deterministic results, a computed-request counter,
each result reported through the call as it is computed, a batch done every ``batch_size``
results. The store is real."""

from __future__ import annotations

import hashlib

from lm_eval.api.instance import Instance
from lm_eval.api.model import CacheHook

from lm_eval_ext.backend.call import RequestType
from lm_eval_ext.backend.front import RequestFront
from lm_eval_ext.cache.fingerprint import ModelIdentity
from lm_eval_ext.cache.request_cache import RequestCache


def fake_value(request_type: str, args: tuple, salt: str = ""):
    digest = hashlib.sha256((salt + repr(args)).encode()).digest()
    number = -int.from_bytes(digest[:8], "big") / 2**57  # full-precision float in [-128, 0)
    if request_type == "loglikelihood":
        return (number, digest[8] % 2 == 0)
    if request_type == "loglikelihood_rolling":
        return number
    return f"gen-{digest[:4].hex()}"


class FakeCachedLM:
    """``report_results=False``: a backend that only returns its values (never reports them)."""

    def __init__(self, cache_dir, mode="readwrite", salt="", batch_size: int = 4,
                 fail_after_batches: int | None = None, report_results: bool = True):
        self.salt, self.batch_size, self.fail_after_batches = salt, batch_size, fail_after_batches
        self.report_results = report_results
        self.cache_hook = CacheHook(None)
        self.computed: list[tuple] = []
        cache = RequestCache(mode, str(cache_dir), identity=self._model_identity, label=lambda: "fake")
        self.front = RequestFront(cache, dict.fromkeys(RequestType, self._compute))

    def set_cache_hook(self, cache_hook):  # as lm-eval's LM, which CachingLM calls
        self.cache_hook = cache_hook

    def _model_identity(self) -> ModelIdentity:
        return ModelIdentity(backend="fake", model_type="causal", weights="w" + self.salt, revision=None,
                             dtype="float32", tokenizer="t", chat_template=None, max_length=128)

    def _value(self, request_type, request):
        value = fake_value(request_type, request.args, self.salt)
        self.computed.append(request.args)
        return value

    def _compute(self, call):
        results = []
        for start in range(0, len(call.requests), self.batch_size):
            if self.fail_after_batches is not None and start // self.batch_size >= self.fail_after_batches:
                raise RuntimeError("simulated crash mid-run")
            for index in range(start, min(start + self.batch_size, len(call.requests))):
                value = self._value(call.request_type.value, call.requests[index])
                if self.report_results:
                    call.result(index, value)
                results.append(value)
            call.batch_done()
        return results

    def loglikelihood(self, requests, disable_tqdm=False):
        return self.front.answer("loglikelihood", requests, lm_eval_hook=self.cache_hook)

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        return self.front.answer("loglikelihood_rolling", requests, lm_eval_hook=self.cache_hook)

    def generate_until(self, requests, disable_tqdm=False):
        return self.front.answer("generate_until", requests, lm_eval_hook=self.cache_hook)

    def request_cache_report(self):
        return self.front.cache.report()

    def get_model_info(self):
        return {"request_cache": self.request_cache_report()}


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
