"""PURE: one task's work in one request type, as a backend's counter counts it before the run.

Filled by ``hf/policy/token_count.py`` (``hf_ext``: its rows, families, generation families) and
``vllm/token_count.py`` (``vllm_ext``: its warm-ups and vLLM's prefix cache); priced by
:mod:`lm_eval_ext.estimate.time_model`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class TokenCount:
    """One task's work in one request type. Token fields are floats where shared work is split."""

    num_requests: int = 0
    context_tokens: int = 0
    """scoring: input tokens before the continuation; generation: prompt tokens"""
    continuation_tokens: int = 0
    """scoring: tokens scored; generation: 0"""
    generation_budget_tokens: int = 0
    """generation: the sum of ``max_new_tokens``"""
    generated_tokens: float = 0.0
    """generation: the central estimate of the tokens generated"""
    stock_tokens: float = 0.0
    """what the unshared, unpadded layout computes (generation: at the central length)"""
    computed_tokens: float = 0.0
    """what ``hf_ext`` computes after sharing (generation: at the central length)"""
    computed_low_tokens: float = 0.0
    """generation: one token generated per request; scoring: equal to ``computed_tokens``"""
    computed_high_tokens: float = 0.0
    """generation: ``max_new_tokens`` generated per request; scoring: equal to ``computed_tokens``"""
    prefill_tokens: float = 0.0
    """tokens of prompt/context forwards (scoring: all of ``computed_tokens``)"""
    decode_tokens: float = 0.0
    """generation: one-token decode steps' tokens, at the central length"""
    shared_prefix_tokens: float = 0.0
    """the part of ``computed_tokens`` that is family prefixes, computed once per call (and so once
    per process under data parallel)"""

    def add_generation(self, prompt_tokens: int, prefill_tokens: float, budget: int, generated: float) -> None:
        """One generation request: its prompt, the part of it prefilled, its ``max_new_tokens`` and its
        expected length (clipped to ``1 .. budget``). The first token comes from the prefill's last
        position, each further one is a decode token."""
        budget = max(1, budget)
        length = min(max(1.0, float(generated)), budget)
        self.num_requests += 1
        self.context_tokens += prompt_tokens
        self.generation_budget_tokens += budget
        self.generated_tokens += length
        self.prefill_tokens += prefill_tokens
        self.decode_tokens += length - 1
        self.computed_high_tokens += budget - 1
        self.stock_tokens += prompt_tokens + length - 1

    def close(self) -> None:
        """Totals once every request is in: scoring computes only prefill; generation spans its length."""
        if self.generation_budget_tokens:
            self.computed_tokens = self.prefill_tokens + self.decode_tokens
            self.computed_low_tokens = self.prefill_tokens
            self.computed_high_tokens += self.prefill_tokens
        else:
            self.computed_low_tokens = self.computed_high_tokens = self.prefill_tokens = self.computed_tokens

    def add(self, other: TokenCount) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict:
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items()}
