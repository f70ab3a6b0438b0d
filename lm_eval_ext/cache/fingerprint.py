"""Model identity for request-cache keys: what decides a model's outputs, and nothing else.

PURE core: :class:`ModelIdentity` and :func:`fingerprint` turn plain data into one hex digest.
Small EDGE at the bottom: :func:`hash_checkpoint` reads files (remembering each file's digest per
path, mtime and size in a JSON memo, so a large checkpoint is read once), :func:`hash_tokenizer`
reads a loaded tokenizer.

Two runs share cached answers exactly when their fingerprints are equal, so a field belongs here
if changing it can change a loglikelihood or a generation, and must stay out if it cannot (else a
resume with another GPU count or batch size would miss everything). See :data:`IGNORED_FIELDS`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_ext.files import write_json_atomic

logger = logging.getLogger(__name__)

#: Bump when the meaning of a field changes: every old key then misses instead of lying.
FINGERPRINT_VERSION = 1

#: Settings deliberately NOT part of the fingerprint, with the reason (like vLLM's compute_hash).
#: They change how fast or where a result is computed, never which result is correct; per-sample
#: differences they cause are float summation order (~1e-6 in float32), inside the project's
#: tolerance, so a cache filled with one layout serves every other layout.
IGNORED_FIELDS: Mapping[str, str] = {
    "parallel layout (strategy, tensor/data/pipeline parallel sizes, device_map)":
        "same weights, same math; only placement differs",
    "batch_size / max_batch_size / token budget":
        "batching groups requests, it does not change what each request means",
    "rank / world_size / device count":
        "a resume with another number of processes must hit every stored request",
    "device (cuda:0 vs cuda:1), offload folder, memory limits":
        "where weights live, not what they are",
    "logits_cache (one-token continuation sharing)":
        "an exact reuse of the same logits, not a different computation",
    "model path spelling":
        "the weights' content hash identifies the model; a moved or symlinked checkpoint still hits",
}

#: Files that carry weights (hashed by content) or change how weights are used (configs).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
#: Model code shipped with the checkpoint (trust_remote_code) decides outputs as much as weights.
CODE_SUFFIXES = (".py",)
CONFIG_FILES = ("config.json", "generation_config.json", "adapter_config.json")

#: Files up to this size are hashed in full; above it, safetensors are hashed by header, size and
#: sampled blocks of every tensor. The header alone is NOT enough: two fine-tunes of one
#: architecture have byte-identical headers and sizes (shapes, dtypes, offsets), so keys collide.
FULL_HASH_LIMIT_BYTES = 256 * 1024 * 1024
SAMPLE_BLOCK_BYTES = 4 * 1024
MEMO_FILE = "fingerprint_memo.json"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ModelIdentity:
    """Everything that decides outputs. Digests are hex strings; ``None`` means "not applicable"."""

    backend: str
    """``hf`` or ``vllm``: two engines may differ in the last digits and in generation details."""
    model_type: str
    """``causal`` or ``seq2seq``: decides how context and continuation are encoded."""
    weights: str
    """Content digest of the checkpoint (weights and configs), see :func:`hash_checkpoint`."""
    revision: str | None
    """Hub revision when the model came from a hub id (the commit, when known)."""
    dtype: str
    """Compute dtype actually used (``float32``, ``bfloat16``...), never ``auto``."""
    tokenizer: str
    """Digest of the tokenizer: vocabulary, merges, special tokens, normalizer."""
    chat_template: str | None
    """Digest of the chat template, or ``None`` when the tokenizer has none."""
    max_length: int | None
    """Context window in tokens; decides truncation of long requests."""
    adapters: tuple[tuple[str, str], ...] = ()
    """``(kind, digest)`` for PEFT adapters or delta weights applied on top of ``weights``."""
    settings: tuple[tuple[str, Any], ...] = field(default=())
    """Other output-changing options as sorted ``(name, value)`` pairs: add_bos_token,
    prefix_token_id, softmax_dtype, truncation, max_gen_toks, think_end_token..."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(identity: ModelIdentity) -> str:
    """Hex sha256 of the identity; equal identities give equal fingerprints in every process."""
    payload = f"lm_eval_ext.cache.fingerprint.v{FINGERPRINT_VERSION}:{identity.to_json()}"
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def sorted_settings(settings: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((str(k), v) for k, v in settings.items()))


def digest_text(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


def combine_digests(named: Iterable[tuple[str, str]]) -> str:
    """One digest over ``(name, digest)`` pairs, independent of listing order."""
    hasher = hashlib.sha256()
    for name, digest in sorted(named):
        hasher.update(f"{name}\0{digest}\n".encode())
    return hasher.hexdigest()


# ---------------------------------------------------------------- EDGE: files and tokenizers


def checkpoint_files(directory: Path) -> list[Path]:
    """Weight and config files of a checkpoint directory (not READMEs, not tokenizer files)."""
    found = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and (
            path.suffix in WEIGHT_SUFFIXES + CODE_SUFFIXES or path.name in CONFIG_FILES
        ):
            found.append(path)
    return found


def hash_checkpoint(path: str | os.PathLike, memo_dir: str | os.PathLike | None, *, save_memo: bool = True) -> str:
    """Content digest of a checkpoint directory or single weight file (e.g. a GGUF).

    Each file's digest is remembered in ``memo_dir/fingerprint_memo.json`` under its absolute path,
    mtime and size, so the second run of a 100 GB checkpoint reads nothing. File names are part of
    the digest relative to the checkpoint root, so copying a checkpoint elsewhere keeps its identity.
    ``save_memo=False`` (``cache=read``) reads the memo but writes nothing into the cache folder.
    """
    root = Path(path)
    files = [root] if root.is_file() else checkpoint_files(root)
    if not files:
        raise FileNotFoundError(f"no weight or config files under {root}")
    memo = _Memo(Path(memo_dir) / MEMO_FILE if memo_dir else None)
    named = []
    for file in files:
        relative = file.name if root.is_file() else file.relative_to(root).as_posix()
        named.append((relative, memo.digest(file)))
    if save_memo:
        memo.save()
    return combine_digests(named)


def checkpoint_identity(name: str, revision: str | None, subfolder: str, memo_dir, *,
                        save_memo: bool = True) -> tuple[str, str | None]:
    """``(weights digest, revision)`` for a local path or a hub id (snapshot digest if downloaded)."""
    if os.path.exists(name):
        return hash_checkpoint(os.path.join(name, subfolder) if subfolder else name, memo_dir,
                               save_memo=save_memo), None
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(name, revision=revision, local_files_only=True)
        commit = os.path.basename(local.rstrip("/"))
        return hash_checkpoint(os.path.join(local, subfolder) if subfolder else local, memo_dir,
                               save_memo=save_memo), commit
    except Exception:  # not downloaded yet: identify by hub id and revision (pin a commit to be safe)
        if not (revision and _COMMIT.match(revision)):
            logger.warning(
                "request cache: %s is identified by hub revision '%s' only; pin revision=<commit> "
                "so that a moved branch cannot serve stale answers", name, revision,
            )
        return f"hub:{name}", revision


def hash_file(path: Path) -> str:
    """Full sha256 for small files; header + size + sampled blocks for large safetensors."""
    size_bytes = path.stat().st_size
    if size_bytes <= FULL_HASH_LIMIT_BYTES or path.suffix != ".safetensors":
        hasher = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
        return "full:" + hasher.hexdigest()
    return "sampled:" + _hash_safetensors_sampled(path, size_bytes)


def _hash_safetensors_sampled(path: Path, size_bytes: int) -> str:
    """Header (names, shapes, dtypes, offsets) + size + three blocks of every tensor's data.

    A fine-tune changes each tensor it touches nearly everywhere, so a block at the start, middle
    and end of *every* tensor tells checkpoints apart even when only one layer or the LM head was
    trained (evenly spaced samples over the whole file could miss a tensor that is 1 % of it).
    Reads about 3 * SAMPLE_BLOCK_BYTES per tensor. Not detected: edits of a few scattered elements.
    """
    hasher = hashlib.sha256(struct.pack("<Q", size_bytes))
    with path.open("rb") as handle:
        (header_bytes,) = struct.unpack("<Q", handle.read(8))
        header = handle.read(header_bytes)
        hasher.update(header)
        data_start = 8 + header_bytes
        for name, spec in sorted(json.loads(header).items()):
            if name == "__metadata__":
                continue
            begin, end = spec["data_offsets"]
            middle = max(begin, (begin + end - SAMPLE_BLOCK_BYTES) // 2)
            for offset in (begin, middle, max(begin, end - SAMPLE_BLOCK_BYTES)):
                handle.seek(data_start + offset)
                hasher.update(handle.read(min(SAMPLE_BLOCK_BYTES, end - offset)))
    return hasher.hexdigest()


class _Memo:
    """``{abs_path: [mtime_ns, size_bytes, digest]}``; a damaged memo is just recomputed."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list] = {}
        self.changed = False
        if path is not None and path.exists():
            try:
                loaded = json.loads(path.read_text())
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                logger.warning("ignoring unreadable fingerprint memo %s", path)

    def digest(self, file: Path) -> str:
        stat = file.stat()
        key = str(file.resolve())
        known = self.entries.get(key)
        if isinstance(known, list) and known[:2] == [stat.st_mtime_ns, stat.st_size]:
            return known[2]
        digest = hash_file(file)
        self.entries[key] = [stat.st_mtime_ns, stat.st_size, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        """Atomic replace: ranks hashing at once never leave a half-written memo. The memo only
        saves time, so a cache folder that cannot be written (read-only, a file, a full disk)
        costs the next run its re-hash, never this run its result; the store reports the folder."""
        if self.path is None or not self.changed:
            return
        try:
            write_json_atomic(self.path, self.entries)
        except OSError as exc:
            logger.debug("fingerprint memo %s not written: %s", self.path, exc)


def hash_tokenizer(tokenizer: Any) -> str:
    """Digest of a loaded transformers tokenizer: its full serialized state, not its path."""
    state: dict[str, Any] = {"class": type(tokenizer).__name__}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        state["backend"] = backend.to_str()
    elif hasattr(tokenizer, "get_vocab"):
        state["vocab"] = sorted(tokenizer.get_vocab().items())
    state["special"] = {
        name: str(getattr(tokenizer, name, None))
        for name in ("bos_token", "eos_token", "unk_token", "pad_token")
    }
    state["added"] = sorted(str(t) for t in getattr(tokenizer, "all_special_tokens", []))
    state["padding_side"] = getattr(tokenizer, "padding_side", None)
    text = json.dumps(state, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
