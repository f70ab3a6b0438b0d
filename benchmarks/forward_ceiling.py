"""The decoder's throughput on this machine at several batch shapes: the ceiling any scorer meets.

Times ``model.get_decoder()(input_ids, use_cache=False)`` (no LM head) on random token ids for ~3 s
per shape, after a warm-up; prints tokens/s per ``rows x tokens``. docs/engine.md quotes its output.

    python benchmarks/forward_ceiling.py --model .models/smollm2-135m
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((8, 90), (16, 90), (32, 90), (64, 90), (96, 90), (4, 512), (1, 1024), (8, 128))


def main() -> int:
    import torch
    from transformers import AutoModelForCausalLM

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / ".models" / "smollm2-135m"))
    parser.add_argument("--seconds", type=float, default=3.0, help="time per shape")
    parser.add_argument("--shapes", default=",".join(f"{r}x{t}" for r, t in SHAPES),
                        help="comma-separated ROWSxTOKENS, e.g. 32x48,64x48")
    args = parser.parse_args()
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",") if shape]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    decoder = model.get_decoder()
    print(f"torch threads {torch.get_num_threads()}")
    generator = torch.Generator().manual_seed(0)
    for rows, tokens in shapes:
        ids = torch.randint(100, 1000, (rows, tokens), generator=generator)
        with torch.no_grad():
            decoder(input_ids=ids[:1, :16])
            start_s, calls = time.perf_counter(), 0
            while time.perf_counter() - start_s < args.seconds:
                decoder(input_ids=ids, use_cache=False)
                calls += 1
            per_call_s = (time.perf_counter() - start_s) / calls
        print(f"{rows:>3} rows x {tokens:>4} tokens: {rows * tokens / per_call_s:>5.0f} tokens/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
