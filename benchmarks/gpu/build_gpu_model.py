"""Build SmolLM2-135M's architecture with random (seeded) weights from its carried config and
tokenizer: the GPU machine cannot download the real weights, and the device call cannot carry them.

Same shapes, same tokenizer, so throughput, memory and stock-vs-ext agreement are representative;
scores are not (and random weights never emit a stop sequence, so every generation runs to its
token limit). ``python benchmarks/gpu/build_gpu_model.py SRC_DIR OUT_DIR``
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

SEED = 0


def build(src: Path, out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (out / ".complete").exists():
        return out
    config = AutoConfig.from_pretrained(src)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    AutoTokenizer.from_pretrained(src).save_pretrained(staging)
    (staging / ".complete").write_text("random init, seed 0\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


if __name__ == "__main__":
    src, out = (Path(a) for a in sys.argv[1:3])
    sys.stdout.write(f"built {build(src, out)}\n")
