"""EDGE (torch): decode throughput of hf_ext's continuous loop at a given number of live rows.

Real GSM8K questions (5-shot prompts as lm-eval builds them are ~1,000 tokens; here the question
text repeated to ``context_tokens``) generate ``new_tokens`` each with no stop and no EOS, so every
row decodes the same number of steps. Tokens per second of the decode-only steps that run the
whole pool (``new_tokens`` must exceed the rows: rows join one a step): the batching itself,
apart from prefill sharing.
"""

from __future__ import annotations

import json
from pathlib import Path


def measure(model_path: str, data_dir: str, rows: list[int], new_tokens: int = 48,
            context_tokens: int = 1000, rounds: int = 2) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_ext.hf.compute.continuous import ContinuousGenerator
    from lm_eval_ext.hf.compute.scoring import split_model
    from lm_eval_ext.hf.policy.batching import GenerationRequest
    from lm_eval_ext.hf.policy.gen_families import GenerationFamily

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    parts = split_model(model)
    questions = [json.loads(line)["question"] for line in Path(data_dir, "gsm8k", "test.jsonl").open()]
    prompts = []
    for q in questions[: max(rows)]:
        tokens = tokenizer(q)["input_ids"]
        prompts.append(tuple((tokens * (context_tokens // len(tokens) + 1))[:context_tokens]))
    out: dict = {"context_tokens": context_tokens, "new_tokens": new_tokens, "rows": {}}
    for _ in range(rounds):
        for n in rows:
            requests = [GenerationRequest(i, prompts[i], new_tokens, ()) for i in range(n)]
            loop = ContinuousGenerator(parts, "cpu", eos_ids=set(), decode=tokenizer.decode, max_rows=n,
                                       columns=context_tokens + new_tokens, prefill_chunk_tokens=4096,
                                       samplers=lambda r: None)
            full = _FullPoolSteps(n)
            loop.run(requests, [GenerationFamily((), tuple(range(n)))], on_finished=lambda i, t: None, on_step=full)
            out["rows"].setdefault(str(n), []).append(round(full.rate(), 2))
    return out


class _FullPoolSteps:
    """Times the loop's decode-only steps with every one of ``rows`` rows live (rows join one a
    step beside the others' decode, and finish one a step: those steps are left out)."""

    def __init__(self, rows: int) -> None:
        import time

        self.rows, self.clock = rows, time.perf_counter
        self.last, self.seen = self.clock(), (0, 0)
        self.steps, self.seconds = 0, 0.0

    def __call__(self, _tokens: int, stats) -> None:
        now = self.clock()
        decoded, prefilled = stats.decode_tokens - self.seen[0], stats.prefill_tokens - self.seen[1]
        if decoded == self.rows and not prefilled:
            self.steps, self.seconds = self.steps + 1, self.seconds + now - self.last
        self.last, self.seen = now, (stats.decode_tokens, stats.prefill_tokens)

    def rate(self) -> float:
        if not self.steps:
            raise RuntimeError(f"no decode step with all {self.rows} rows live: new_tokens must exceed the rows")
        return self.rows * self.steps / self.seconds


def versus_generate_batch(model_path: str, data_dir: str, num_prompts: int = 16, new_tokens: int = 32,
                          rounds: int = 2) -> dict:
    """transformers' own continuous batching (``model.generate_batch``, paged attention) against
    hf_ext's loop on the same requests: GSM8K questions, greedy, ``new_tokens`` each with no stop and
    no EOS (``generate_batch`` has no stop strings), interleaved; wall times and whether the tokens
    agree. Its first call warms up (timed apart)."""
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from lm_eval_ext.hf.compute.continuous import ContinuousGenerator
    from lm_eval_ext.hf.compute.scoring import split_model
    from lm_eval_ext.hf.policy.batching import GenerationRequest
    from lm_eval_ext.hf.policy.gen_families import GenerationFamily

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    questions = [json.loads(line)["question"] for line in Path(data_dir, "gsm8k", "test.jsonl").open()][:num_prompts]
    prompts = [tokenizer(q)["input_ids"] for q in questions]
    ours = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    paged = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="paged|sdpa").eval()
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)

    def library():
        out = paged.generate_batch(prompts, generation_config=config)
        return [list(out[k].generated_tokens) for k in sorted(out, key=lambda k: int(k.split("_")[-1]))]

    def loop():
        parts, found = split_model(ours), {}
        requests = [GenerationRequest(i, tuple(p), new_tokens, ()) for i, p in enumerate(prompts)]
        generator = ContinuousGenerator(parts, "cpu", eos_ids=set(), decode=tokenizer.decode, max_rows=len(prompts),
                                        columns=max(map(len, prompts)) + new_tokens, prefill_chunk_tokens=4096,
                                        samplers=lambda r: None)
        generator.run(requests, [GenerationFamily((), tuple(range(len(prompts))))],
                      on_finished=lambda i, tokens: found.__setitem__(i, tokens))
        return [found[i] for i in range(len(prompts))]

    times: dict = {"generate_batch": [], "hf_ext loop": []}
    with torch.no_grad():
        started = time.perf_counter()
        first = library()
        warmup_s = time.perf_counter() - started
        mine = loop()
        for _ in range(rounds):
            for name, fn in (("generate_batch", library), ("hf_ext loop", loop)):
                started = time.perf_counter()
                fn()
                times[name].append(round(time.perf_counter() - started, 3))
    return {"num_prompts": len(prompts), "new_tokens": new_tokens, "times_s": times,
            "generate_batch_first_call_s": round(warmup_s, 3), "same_tokens": first == mine}
