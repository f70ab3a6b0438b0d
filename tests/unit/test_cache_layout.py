"""The request store's layout: a network filesystem is recognised from /proc/self/mountinfo and gets
one shard file per writer; shard lines check themselves; a merged read, compaction and the CLI keep
every committed entry and never call a half-written line damage."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from lm_eval_ext.cache.fold import fold, merged_view
from lm_eval_ext.cache.layout import count_entries, filesystem_type, open_store, requested_layout
from lm_eval_ext.cache.mounts import choose_layout, filesystem_of, is_network, parse_mountinfo
from lm_eval_ext.cache.shard_lines import entry_line, parse_shard
from lm_eval_ext.cache.shards import ShardedStore, shard_paths
from lm_eval_ext.cache.store import DB_FILE, Entry, RequestStore
from lm_eval_ext.errors import UserError

MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 27 0:40 / /scratch rw,relatime shared:5 - nfs4 fs01:/export/scratch rw,vers=4.2
32 31 0:41 / /scratch/local rw - xfs /dev/nvme0n1 rw
33 27 0:42 / /lustre rw - lustre 10.0.0.1@o2ib:/fs rw
34 27 0:43 / /gpfs rw - gpfs gpfs0 rw
35 27 0:44 / /my\\040space rw - cifs //srv/share rw
36 27 0:45 / /tmp rw - tmpfs tmpfs rw
"""


@pytest.mark.parametrize(("path", "fstype", "layout"), [
    ("/home/me/.cache/lm_eval_ext", "ext4", "wal"),
    ("/scratch/me/cache", "nfs4", "shards"),
    ("/scratch", "nfs4", "shards"),
    ("/scratchpad/x", "ext4", "wal"),  # a prefix of the name, not of the path
    ("/scratch/local/cache", "xfs", "wal"),  # the longest mount point wins
    ("/lustre/project/cache", "lustre", "shards"),
    ("/gpfs/u/cache", "gpfs", "shards"),
    ("/my space/cache", "cifs", "shards"),
    ("/tmp/cache", "tmpfs", "wal"),
])
def test_the_filesystem_of_a_path_decides_the_layout(path, fstype, layout):
    found = filesystem_of(path, parse_mountinfo(MOUNTINFO))
    assert found == fstype
    assert choose_layout("auto", found).layout == layout


def test_forced_layouts_and_their_reasons():
    assert choose_layout("shards", "ext4").reason == "forced by LM_EVAL_EXT_CACHE_LAYOUT=shards (on ext4)"
    assert "only processes of one host may use this cache" in choose_layout("wal", "nfs4").reason
    assert choose_layout("auto", "nfs4").reason.startswith("nfs4 is a network filesystem")
    assert not is_network(None) and is_network("NFS4")
    with pytest.raises(UserError, match=r"^LM_EVAL_EXT_CACHE_LAYOUT='sharded' is not a cache layout; use auto"):
        requested_layout({"LM_EVAL_EXT_CACHE_LAYOUT": "sharded"})


def test_this_machine_s_filesystem_is_read_for_a_folder_that_does_not_exist_yet(tmp_path):
    """The test machine's temporary folder is local (the CI runs on one host)."""
    found = filesystem_type(tmp_path / "not" / "yet")
    assert found is not None and found == filesystem_type(tmp_path) and not is_network(found)


def _entry(i: int, value: str = "[-1.5, true]") -> Entry:
    return Entry(f"key{i:04d}", "fp", "loglikelihood", f'["ctx {i}", " cont"]', value, 0.25)


def test_a_shard_line_checks_itself():
    line = entry_line("k", "fp", "loglikelihood", '["a\\tb", "c"]', "[-1.0, false]", 0.5, 10.0)
    whole = parse_shard(line + line[:20])  # a second line cut by a kill
    assert [e.key for e in whole.entries] == ["k"] and whole.torn_tail_bytes == 20 and not whole.unreadable
    flipped = line.replace(b"-1.0", b"-9.0")
    bad = parse_shard(flipped + line)
    assert bad.unreadable == [0] and [e.value_json for e in bad.entries] == ["[-1.0, false]"]
    assert parse_shard(b"\0" * 8 + b"\n").first_unreadable == 0  # another host's view of a hole


@pytest.fixture
def shards_layout(monkeypatch):
    monkeypatch.setenv("LM_EVAL_EXT_CACHE_LAYOUT", "shards")


def test_each_writer_its_own_file_and_a_reader_merges_them(tmp_path, shards_layout):
    first, choice = open_store(tmp_path)
    second, _ = open_store(tmp_path)
    assert choice.layout == "shards" and isinstance(first, ShardedStore)
    first.put_many([_entry(i) for i in range(4)])
    time.sleep(0.01)
    second.put_many([_entry(i, "[-2.0, false]") for i in range(2, 6)])
    assert len(shard_paths(tmp_path)) == 2 and not (tmp_path / DB_FILE).exists()  # no shared SQLite file
    reader, _ = open_store(tmp_path, readonly=True)
    found = reader.get_many([f"key{i:04d}" for i in range(7)])
    assert len(found) == 6 and found["key0003"][0] == "[-1.5, true]"  # the value stored first wins
    assert count_entries(tmp_path) == 6
    with (shard_paths(tmp_path)[0]).open("ab") as handle:  # a batch cut in the middle of a line
        handle.write(entry_line("key9999", "fp", "loglikelihood", "[]", "[-3.0, true]", 1.0, 1.0)[:30])
    assert open_store(tmp_path, readonly=True)[0].get_many(["key9999"]) == {}


def test_compaction_folds_keeps_live_shards_and_loses_nothing(tmp_path, shards_layout):
    live, _ = open_store(tmp_path)
    live.put_many([_entry(i) for i in range(3)])
    done, _ = open_store(tmp_path)
    done.put_many([_entry(i) for i in range(3, 5)])
    done.close()  # its end line: finished
    report = fold(tmp_path)
    assert report.num_entries == 5 and len(report.deleted_shards) == 1 and len(report.kept_shards) == 1
    (kept,) = shard_paths(tmp_path)
    folded_bytes = kept.stat().st_size
    live.put_many([_entry(5)])  # the live writer goes on after the fold
    reader, _ = open_store(tmp_path, readonly=True)
    assert len(reader.get_many([f"key{i:04d}" for i in range(6)])) == 6 and count_entries(tmp_path) == 6
    main = RequestStore.open(tmp_path, readonly=True, immutable=True)
    assert main.query("PRAGMA journal_mode")[0][0] == "delete"  # one self-contained file, read without locks
    assert main.folded_offsets() == {kept.name: folded_bytes}  # readers read the live shard from there on
    live.close()
    assert fold(tmp_path).num_entries == 1 and shard_paths(tmp_path) == []
    assert count_entries(tmp_path) == 6


def test_a_second_compaction_waits_for_the_first(tmp_path, shards_layout):
    open_store(tmp_path)[0].put_many([_entry(0)])
    (tmp_path / "compact.lock").write_text("node07 pid 12 since then\n")
    with pytest.raises(UserError, match=r"another `lm-eval-ext cache compact` \(node07 pid 12 since then\) holds"):
        fold(tmp_path)


def test_shards_left_in_a_local_cache_are_read_and_folded_in_place(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_EVAL_EXT_CACHE_LAYOUT", "shards")
    writer, _ = open_store(tmp_path)
    writer.put_many([_entry(i) for i in range(3)])
    writer.close()
    monkeypatch.setenv("LM_EVAL_EXT_CACHE_LAYOUT", "wal")
    store, choice = open_store(tmp_path)
    assert choice.layout == "wal" and len(store.get_many([f"key{i:04d}" for i in range(3)])) == 3
    store.put_many([_entry(3)])  # into the SQLite file
    assert len(shard_paths(tmp_path)) == 1 and count_entries(tmp_path) == 4
    assert fold(tmp_path).num_entries == 3 and shard_paths(tmp_path) == []
    assert RequestStore.open(tmp_path).query("SELECT COUNT(*) FROM entries")[0][0] == 4


def _cli(*argv, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lm_eval_ext.cli", "cache", *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_the_cache_cli_sees_shards(tmp_path, shards_layout):
    writer, _ = open_store(tmp_path)
    writer.register_model("fp", "tiny", "{}")
    writer.put_many([_entry(i) for i in range(3)])
    stats = _cli("--cache-dir", str(tmp_path), "stats")
    assert stats.returncode == 0 and "3 entries, 0 hits served" in stats.stdout and "1 shard file(s)" in stats.stdout
    with merged_view(tmp_path) as (view, report):
        assert view.query("SELECT COUNT(*) FROM entries")[0][0] == 3 and not report.unreadable
    exported = _cli("--cache-dir", str(tmp_path), "export")
    assert len(exported.stdout.splitlines()) == 3
    cleared = _cli("--cache-dir", str(tmp_path), "clear", "--model", "tiny", env={"LM_EVAL_EXT_CACHE_LAYOUT": "shards"})
    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout.strip() == f"deleted 3 entries from {tmp_path / DB_FILE} (shards folded into it first)"
    assert count_entries(tmp_path) == 0  # the live shard's entries are folded, then deleted: they stay gone
    compacted = _cli("--cache-dir", str(tmp_path), "compact", "--stale-hours", "0")
    assert compacted.returncode == 2 and "--stale-hours 0.0 must be positive" in compacted.stderr
