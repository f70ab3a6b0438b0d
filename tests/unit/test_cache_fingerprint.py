"""Fingerprints: what changes outputs changes the key; what does not, does not."""

import dataclasses
import json
import os
import shutil
import struct

import pytest

from lm_eval_ext.cache import fingerprint as fp
from lm_eval_ext.hf.config import HfExtConfig
from lm_eval_ext.errors import ConfigError


def identity(**changes) -> fp.ModelIdentity:
    base = fp.ModelIdentity(backend="hf", model_type="causal", weights="w", revision=None, dtype="float32",
                            tokenizer="t", chat_template=None, max_length=1024)
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    "change",
    [{"weights": "w2"}, {"dtype": "bfloat16"}, {"tokenizer": "t2"}, {"chat_template": "c"},
     {"max_length": 2048}, {"revision": "abc"}, {"backend": "vllm"}, {"adapters": (("peft", "p"),)},
     {"settings": (("add_bos_token", True),)}],
)
def test_every_output_deciding_field_changes_the_fingerprint(change):
    assert fp.fingerprint(identity(**change)) != fp.fingerprint(identity())


def test_layout_fields_are_documented_as_left_out_and_absent_from_the_identity():
    names = {f.name for f in dataclasses.fields(fp.ModelIdentity)}
    for left_out in ("batch_size", "world_size", "rank", "tensor_parallel_size", "data_parallel_size",
                     "device", "strategy", "num_gpus"):
        assert left_out not in names
    documented = " ".join(fp.IGNORED_FIELDS)
    for word in ("parallel", "batch_size", "rank", "device count", "token budget"):
        assert word in documented


def _safetensors(path, data: bytes, header=None):
    header = header or {"w": {"dtype": "F32", "shape": [len(data) // 4], "data_offsets": [0, len(data)]}}
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _checkpoint(directory, data: bytes):
    directory.mkdir(parents=True)
    _safetensors(directory / "model.safetensors", data)
    (directory / "config.json").write_text('{"model_type": "llama"}')
    (directory / "README.md").write_text("not part of the identity")
    return directory


def test_checkpoint_digest_follows_content_not_location(tmp_path):
    first = _checkpoint(tmp_path / "a", b"\x01" * 4096)
    moved = tmp_path / "elsewhere" / "b"
    shutil.copytree(first, moved)
    (moved / "README.md").write_text("edited readme")
    assert fp.hash_checkpoint(first, tmp_path) == fp.hash_checkpoint(moved, tmp_path)
    changed = _checkpoint(tmp_path / "c", b"\x01" * 4092 + b"\x02" * 4)  # same header and size
    assert fp.hash_checkpoint(changed, tmp_path) != fp.hash_checkpoint(first, tmp_path)
    (moved / "config.json").write_text('{"model_type": "llama", "rope_theta": 1}')
    assert fp.hash_checkpoint(moved, tmp_path) != fp.hash_checkpoint(first, tmp_path)


def test_large_safetensors_are_sampled_and_still_tell_one_retrained_tensor_apart(tmp_path, monkeypatch):
    monkeypatch.setattr(fp, "FULL_HASH_LIMIT_BYTES", 0)
    block = fp.SAMPLE_BLOCK_BYTES
    header = {"big": {"dtype": "F32", "shape": [100 * block // 4], "data_offsets": [0, 100 * block]},
              "head": {"dtype": "F32", "shape": [block // 4], "data_offsets": [100 * block, 101 * block]}}
    paths = []
    for name, head in (("one", b"\x00"), ("two", b"\x07")):  # only the small last tensor differs
        (tmp_path / name).mkdir()
        _safetensors(tmp_path / name / "model.safetensors", bytes(100 * block) + head * block, header)
        paths.append(tmp_path / name / "model.safetensors")
    assert fp.hash_file(paths[0]).startswith("sampled:")
    assert fp.hash_file(paths[0]) != fp.hash_file(paths[1])
    assert fp.hash_file(paths[0]) == fp.hash_file(paths[0])


def test_digests_are_remembered_per_path_mtime_and_size(tmp_path):
    ckpt = _checkpoint(tmp_path / "m", b"\x01" * 64)
    first = fp.hash_checkpoint(ckpt, tmp_path)
    memo = json.loads((tmp_path / fp.MEMO_FILE).read_text())
    assert str((ckpt / "model.safetensors").resolve()) in memo
    # same size and mtime, other bytes: the memo answers without reading (that is its purpose)
    stat = (ckpt / "model.safetensors").stat()
    _safetensors(ckpt / "model.safetensors", b"\x09" * 64)
    os.utime(ckpt / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fp.hash_checkpoint(ckpt, tmp_path) == first
    os.utime(ckpt / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert fp.hash_checkpoint(ckpt, tmp_path) != first


def test_a_damaged_memo_is_recomputed_not_trusted(tmp_path):
    ckpt = _checkpoint(tmp_path / "m", b"\x01" * 64)
    expected = fp.hash_checkpoint(ckpt, None)
    (tmp_path / fp.MEMO_FILE).write_text("{broken")
    assert fp.hash_checkpoint(ckpt, tmp_path) == expected


def test_an_empty_checkpoint_directory_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no weight or config files"):
        fp.hash_checkpoint(tmp_path / "empty", None)


@pytest.mark.parametrize(("value", "expected"), [("read", "read"), (False, "off"), (True, "readwrite"), ("off", "off")])
def test_cache_model_arg_is_parsed_once(value, expected):
    assert HfExtConfig.from_model_args({"pretrained": "m", "cache": value}).cache == expected


def test_bad_cache_mode_names_the_choices():
    with pytest.raises(ConfigError, match="cache='rw' is not valid; use one of: off, read, write, readwrite"):
        HfExtConfig.from_model_args({"pretrained": "m", "cache": "rw"})


def test_cache_fields_are_not_forwarded_to_hflm():
    config = HfExtConfig.from_model_args({"pretrained": "m", "cache": "off", "cache_dir": "/tmp/x"})
    kwargs = config.hflm_kwargs(device="cpu", dtype="float32")
    assert "cache" not in kwargs and "cache_dir" not in kwargs
    assert config.cache_dir == "/tmp/x"


# issue 16: cache=read writes nothing; a cache folder that cannot hold the memo is not a traceback

def test_save_memo_false_reads_the_memo_but_writes_nothing(tmp_path):
    ckpt = _checkpoint(tmp_path / "m", b"\x01" * 64)
    memo_dir = tmp_path / "cache"
    expected = fp.hash_checkpoint(ckpt, None)
    assert fp.hash_checkpoint(ckpt, memo_dir, save_memo=False) == expected
    assert fp.checkpoint_identity(str(ckpt), None, "", memo_dir, save_memo=False) == (expected, None)
    assert not memo_dir.exists()
    assert fp.hash_checkpoint(ckpt, memo_dir) == expected and (memo_dir / fp.MEMO_FILE).exists()


def test_a_memo_folder_that_is_a_file_costs_only_the_memo(tmp_path):
    ckpt = _checkpoint(tmp_path / "m", b"\x01" * 64)
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("a file")
    assert fp.hash_checkpoint(ckpt, not_a_dir) == fp.hash_checkpoint(ckpt, None)
    assert not_a_dir.read_text() == "a file"
