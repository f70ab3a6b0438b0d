"""The decoder's throughput on this machine at several batch shapes: the ceiling any scorer meets.

Times ``model.get_decoder()(input_ids, use_cache=False)`` (no LM head) on random token ids for ~3 s
per shape, after a warm-up; prints tokens/s per ``rows x tokens``. docs/engine.md quotes its output.
A shape ``ROWSxTOKENS+PREFIX`` times rows that continue a ``PREFIX``-token prefix computed once
(transformers' own cache, the prefix's keys and values shared by every row, causal attention):
the ceiling of few-shot rows such as MMLU's; only the rows' own tokens count. Those rows are timed
twice: with transformers' ``sdpa`` (which copies each grouped K/V head per query head) and with
``lm_eval_ext.hf.compute.grouped_attention`` (the same attention reading the grouped heads in place).

    python benchmarks/forward_ceiling.py --model .models/smollm2-135m
    python benchmarks/forward_ceiling.py --shapes 64x65+330,64x65
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((8, 90), (16, 90), (32, 90), (64, 90), (96, 90), (4, 512), (1, 1024), (8, 128))


def main() -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from lm_eval_ext.hf.compute.grouped_attention import grouped_query_attention

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / ".models" / "smollm2-135m"))
    parser.add_argument("--seconds", type=float, default=3.0, help="time per shape")
    parser.add_argument("--shapes", default=",".join(f"{r}x{t}" for r, t in SHAPES),
                        help="comma-separated ROWSxTOKENS[+PREFIX], e.g. 32x48,64x65+330")
    args = parser.parse_args()
    shapes = [parse_shape(shape) for shape in args.shapes.split(",") if shape]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    decoder = model.get_decoder()
    print(f"torch threads {torch.get_num_threads()}")
    generator = torch.Generator().manual_seed(0)
    for rows, tokens, prefix_tokens in shapes:
        ids = torch.randint(100, 1000, (rows, tokens), generator=generator)
        prefix = torch.randint(100, 1000, (1, prefix_tokens), generator=generator)
        label = f"{rows:>3} rows x {tokens:>4} tokens"
        if not prefix_tokens:
            rate = _tokens_per_s(functools.partial(decoder, input_ids=ids, use_cache=False), ids.numel(), args.seconds)
            print(f"{label}: {rate:>5.0f} tokens/s")
            continue
        forward = _rows_after(decoder, prefix, ids)
        print(f"{label} after a {prefix_tokens}-token prefix, transformers sdpa: "
              f"{_tokens_per_s(forward, ids.numel(), args.seconds):>5.0f} tokens/s")
        with grouped_query_attention(model):
            print(f"{label} after a {prefix_tokens}-token prefix, grouped K/V in place: "
                  f"{_tokens_per_s(forward, ids.numel(), args.seconds):>5.0f} tokens/s")
    return 0


def _tokens_per_s(forward, tokens: int, seconds: float) -> float:
    """Calls ``forward`` for ``seconds`` after one warm-up call."""
    import torch

    with torch.no_grad():
        forward()
        start_s, calls = time.perf_counter(), 0
        while time.perf_counter() - start_s < seconds:
            forward()
            calls += 1
    return tokens * calls / (time.perf_counter() - start_s)


def parse_shape(shape: str) -> tuple[int, int, int]:
    """``ROWSxTOKENS`` or ``ROWSxTOKENS+PREFIX`` -> (rows, tokens, prefix tokens)."""
    body, _, prefix = shape.partition("+")
    rows, tokens = (int(n) for n in body.split("x"))
    return rows, tokens, int(prefix or 0)


def _rows_after(decoder, prefix, ids):
    """One forward of ``ids``' rows after ``prefix``: its KV computed once, then each call gets a
    fresh cache holding it broadcast to the rows (what ``DynamicCache`` holds for a batch that
    shares a prompt); positions continue after the prefix."""
    import torch
    from transformers import DynamicCache

    once = DynamicCache()
    with torch.no_grad():
        decoder(input_ids=prefix, past_key_values=once, use_cache=True)
    layers = [(layer.keys, layer.values) for layer in once.layers]
    rows, tokens = ids.shape
    positions = torch.arange(prefix.shape[1], prefix.shape[1] + tokens).expand(rows, -1)

    def forward():
        cache = DynamicCache()
        for index, (keys, values) in enumerate(layers):
            cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), index)
        decoder(input_ids=ids, past_key_values=cache, position_ids=positions, use_cache=True)

    return forward



if __name__ == "__main__":
    raise SystemExit(main())
