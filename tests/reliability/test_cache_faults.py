"""The request cache under storage faults: a full disk mid-write, read-only storage, a cache
directory that is a file, SIGKILL during a checkpoint. In every case: no committed entry is lost,
and no intact cache is called damaged (the advice to move it aside would throw the entries away).

The full-disk and read-only cases need a size-limited, remountable filesystem: a 256 KiB tmpfs,
mounted as root and unmounted afterwards; they skip cleanly where mounting is not permitted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lm_eval_ext.cache.store import DB_FILE, CacheFileError, Entry, RequestStore, check_database_header
from lm_eval_ext.cache.keys import encode_value
from lm_eval_ext.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def _entries(start: int, count: int, pad: int = 400) -> list[Entry]:
    return [Entry(f"key{i:06d}", "fp", "loglikelihood", f'["ctx {i} {"x" * pad}", " c"]',
                  encode_value("loglikelihood", (-1.0 / (i + 1), i % 2 == 0)), 0.01) for i in range(start, start + count)]


def _assert_all_there(cache_dir: Path, keys: list[str], readonly: bool = False) -> None:
    """Opening must succeed (no 'damaged'/'truncated' verdict) and every committed key be there."""
    store = RequestStore.open(cache_dir, readonly=readonly)
    try:
        assert store.integrity_errors() == []
        found = store.get_many(keys)
        assert sorted(found) == sorted(keys), f"{len(set(keys) - set(found))} committed entries lost"
    finally:
        store.close()


@contextlib.contextmanager
def small_tmpfs(tmp_path: Path, size: str = "256k"):
    mount_point = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not permitted'})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _remount_read_only(mount_point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)


# ---------------------------------------------------------------- full disk


def _fill_until_full(cache_dir: Path) -> tuple[list[str], str]:
    """Batches of entries until the disk is full; returns the committed keys and the error line."""
    store = RequestStore.open(cache_dir)
    committed: list[str] = []
    try:
        for batch in range(10_000):
            entries = _entries(batch * 20, 20)
            try:
                store.put_many(entries)
            except UserError as exc:
                return committed, str(exc)
            committed += [e.key for e in entries]
        raise AssertionError("the 256 KiB disk never filled up")
    finally:
        with contextlib.suppress(sqlite3.Error):
            store.close()


def test_a_full_disk_mid_write_is_reported_as_full_and_loses_nothing(tmp_path):
    with small_tmpfs(tmp_path) as disk:
        cache_dir = disk / "cache"
        committed, message = _fill_until_full(cache_dir)
        assert message == (
            f"the disk holding the request cache {cache_dir / DB_FILE} is full; free space and rerun (every "
            "entry stored before is kept, and SQLite finishes or rolls back the interrupted write on the next "
            "open), or pass cache_dir=OTHER_DIR or cache=off in model_args")
        assert committed, "nothing was committed before the disk filled"
        check_database_header(cache_dir / DB_FILE)  # a WAL beside a short main file is not 'truncated'
        _assert_all_there(cache_dir, committed, readonly=True)  # still full: a read-only look works
        # the user frees space, as advised, and reruns: everything is there and writing works again
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        _assert_all_there(cache_dir, committed)
        store = RequestStore.open(cache_dir)
        store.put_many(_entries(900_000, 5))
        store.close()
        _assert_all_there(cache_dir, committed + [f"key{i:06d}" for i in range(900_000, 900_005)])


def test_a_main_file_shorter_than_its_header_beside_a_wal_is_left_to_sqlite(tmp_path):
    """The state a full disk (or a kill) during a checkpoint leaves: page 1 already says N pages,
    the file has fewer, and the WAL still holds them. SQLite recovers it; we must not refuse it."""
    child = """
import sys
from lm_eval_ext.cache.store import RequestStore
from tests.reliability.test_cache_faults import _entries
store = RequestStore.open(sys.argv[1])
store._db.execute("PRAGMA wal_autocheckpoint = 0")
store.put_many(_entries(0, 300))
print("committed", flush=True)
sys.stdin.readline()
"""
    process = subprocess.Popen([sys.executable, "-c", child, str(tmp_path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.stdout.readline().strip() == "committed"
    os.kill(process.pid, signal.SIGKILL)  # the WAL holds every page; nothing checkpointed
    process.wait()
    path = tmp_path / DB_FILE
    wal = tmp_path / (DB_FILE + "-wal")
    assert wal.stat().st_size > 0
    # a checkpoint that wrote page 1 and then stopped: page 1 from the WAL's last copy of it
    page_size = 4096
    wal_bytes = wal.read_bytes()
    frames = [(32 + n * (24 + page_size)) for n in range((len(wal_bytes) - 32) // (24 + page_size))]
    last_page_1 = max(f for f in frames if int.from_bytes(wal_bytes[f:f + 4], "big") == 1)
    header_page = wal_bytes[last_page_1 + 24:last_page_1 + 24 + page_size]
    with path.open("r+b") as handle:
        handle.write(header_page)
    claimed = int.from_bytes(header_page[28:32], "big") * page_size
    assert path.stat().st_size < claimed
    alone = tmp_path / "without-wal"
    alone.mkdir()
    (alone / DB_FILE).write_bytes(path.read_bytes())
    with pytest.raises(CacheFileError, match=r"is truncated \(\d+ bytes, its header says \d+\)"):
        check_database_header(alone / DB_FILE)  # without its WAL the same file really is truncated
    check_database_header(path)
    _assert_all_there(tmp_path, [f"key{i:06d}" for i in range(300)])


# ---------------------------------------------------------------- read-only storage


@pytest.mark.parametrize("leave_wal", [False, True], ids=["checkpointed", "wal-left-by-a-kill"])
def test_read_only_storage_reads_every_entry_and_writing_is_one_line(tmp_path, leave_wal):
    with small_tmpfs(tmp_path, "4m") as disk:
        cache_dir = disk / "cache"
        keys = [e.key for e in _entries(0, 100)]
        store = RequestStore.open(cache_dir)
        store.put_many(_entries(0, 100))
        if leave_wal:  # as if the writer was killed: -wal and -shm stay next to the file
            store._db.execute("PRAGMA wal_autocheckpoint = 0")
            store.put_many(_entries(100, 50))
            keys += [e.key for e in _entries(100, 50)]
            saved = tmp_path / "as-left-by-a-kill"
            shutil.copytree(cache_dir, saved)  # the files while the writer still holds them
            store.close()
            shutil.rmtree(cache_dir)
            shutil.copytree(saved, cache_dir)
            assert (cache_dir / (DB_FILE + "-wal")).stat().st_size > 0
        else:
            store.close()
        listing = sorted(os.listdir(cache_dir))
        _remount_read_only(disk)
        _assert_all_there(cache_dir, keys, readonly=True)
        assert sorted(os.listdir(cache_dir)) == listing
        with pytest.raises(UserError) as failure:
            RequestStore.open(cache_dir).put_many(_entries(500, 1))
        message = str(failure.value)
        assert "damaged" not in message and "truncated" not in message and "\n" not in message
        assert message.endswith("pass cache_dir=A_WRITABLE_DIR, cache=read to only read it, or cache=off"), message


# ---------------------------------------------------------------- a directory that is a file


def test_a_cache_directory_that_is_a_file_is_one_line_and_the_file_is_kept(tmp_path):
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("my notes")
    for readonly in (False, True):
        with pytest.raises(UserError) as failure:
            RequestStore.open(not_a_dir, readonly=readonly)
        assert str(failure.value) == (f"cache directory {not_a_dir} is a file, not a directory; pass "
                                      "cache_dir=A_DIRECTORY or cache=off in model_args")
    assert not_a_dir.read_text() == "my notes"


# ---------------------------------------------------------------- SIGKILL during a checkpoint

_CHECKPOINTER = """
import sys
from lm_eval_ext.cache.store import RequestStore
from tests.reliability.test_cache_faults import _entries
store = RequestStore.open(sys.argv[1])
store._db.execute("PRAGMA wal_autocheckpoint = 0")
start = int(sys.argv[2])
for batch in range(40):
    store.put_many(_entries(start + batch * 25, 25))
    print(start + batch * 25 + 25, flush=True)  # committed up to here
print("checkpointing", flush=True)
while True:
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    store.put_many(_entries(start + 10_000, 1))  # the WAL grows again, to be checkpointed again
"""


def test_sigkill_during_checkpoints_loses_nothing_and_is_never_called_damaged(tmp_path):
    committed: list[str] = []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for round_index, delay_s in enumerate((0.0, 0.01, 0.03, 0.08)):
        start = round_index * 100_000
        process = subprocess.Popen([sys.executable, "-c", _CHECKPOINTER, str(tmp_path), str(start)],
                                   stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
        last = start
        for line in process.stdout:
            if line.strip() == "checkpointing":
                break
            last = int(line)
        time.sleep(delay_s)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        committed += [f"key{i:06d}" for i in range(start, last)]
        check_database_header(tmp_path / DB_FILE)
        _assert_all_there(tmp_path, committed)
