"""The shards layout (a cache on a cluster's shared filesystem) with real processes: two writers at
once never share a file, a lock or a memory mapping; a writer killed mid-batch loses nothing it had
committed and leaves nothing `cache verify` calls damaged; compaction folds both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from lm_eval_ext.cache.layout import count_entries
from lm_eval_ext.cache.shards import shard_paths
from lm_eval_ext.cache.store import DB_FILE

WRITER = """
import sys
from lm_eval_ext.cache.keys import args_json, request_key
from lm_eval_ext.cache.layout import open_store
from lm_eval_ext.cache.store import Entry

cache_dir, name, num_batches = sys.argv[1], sys.argv[2], int(sys.argv[3])
store, choice = open_store(cache_dir)
assert choice.layout == "shards", choice


def batch(number):
    entries = []
    for i in range(20):
        args = (f"{name} context {number} {i} " + "x" * 200, " continuation")
        entries.append(Entry(request_key("f" * 64, "loglikelihood", args), "f" * 64, "loglikelihood", args_json(args),
                             "[-1.25, true]", 0.01))
    return entries


store.register_model("f" * 64, "tiny", "{}")
store.put_many(batch(0))
print("committed 20", flush=True)
sys.stdin.readline()  # both writers are alive and hold their files now: the test looks at them
for number in range(1, num_batches):
    store.put_many(batch(number))
    print(f"committed {20 * (number + 1)}", flush=True)
"""


def _start(cache_dir: Path, name: str, num_batches: int) -> subprocess.Popen:
    env = {**os.environ, "LM_EVAL_EXT_CACHE_LAYOUT": "shards"}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(cache_dir), name, str(num_batches)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)


def _files_in(pid: int, folder: Path) -> tuple[set[str], set[str]]:
    """What process ``pid`` has open (descriptors) and mapped (memory) inside ``folder``."""
    inside = str(folder.resolve()) + "/"
    opened = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    mapped = {line.split(None, 5)[5].strip() for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
              if len(line.split(None, 5)) == 6}
    return {p for p in opened if p.startswith(inside)}, {p for p in mapped if p.startswith(inside)}


def test_two_writers_never_share_a_lock_and_a_kill_loses_nothing_committed(tmp_path):
    cache_dir = tmp_path / "cache"
    first, second = _start(cache_dir, "a", 10), _start(cache_dir, "b", 400)
    try:
        for writer in (first, second):
            assert writer.stdout.readline().strip() == "committed 20"
        (open_a, mapped_a), (open_b, mapped_b) = _files_in(first.pid, cache_dir), _files_in(second.pid, cache_dir)
        assert len(open_a) == len(open_b) == 1 and not open_a & open_b, (open_a, open_b)  # each its own shard only
        assert not mapped_a and not mapped_b  # no shared memory (SQLite's WAL maps a -shm file)
        assert not (cache_dir / DB_FILE).exists()
        assert count_entries(cache_dir) == 40  # a reader merges both while they write

        first.stdin.write("go\n"), first.stdin.flush()
        second.stdin.write("go\n"), second.stdin.flush()
        committed = 20
        for line in second.stdout:  # kill the second writer somewhere in its batches
            committed = int(line.split()[1])
            if committed >= 200:
                os.kill(second.pid, signal.SIGKILL)
                break
        assert first.wait(60) == 0
        second.wait(60)
    finally:
        for writer in (first, second):
            if writer.poll() is None:
                os.killpg(writer.pid, signal.SIGKILL)
                writer.wait()
    stored = count_entries(cache_dir)
    assert stored >= 200 + committed  # every batch a writer was told was committed is there
    assert len(shard_paths(cache_dir)) == 2

    env = {**os.environ, "LM_EVAL_EXT_CACHE_LAYOUT": "shards"}
    cli = [sys.executable, "-m", "lm_eval_ext.cli", "cache", "--cache-dir", str(cache_dir)]
    verify = subprocess.run([*cli, "verify"], capture_output=True, text=True, env=env, timeout=120)
    assert verify.returncode == 0 and "integrity: ok" in verify.stdout, verify.stdout + verify.stderr  # not "damaged"
    compact = subprocess.run([*cli, "compact"], capture_output=True, text=True, env=env, timeout=120)
    assert compact.returncode == 0, compact.stderr
    assert compact.stdout.startswith(f"folded {stored} new entries into {cache_dir / DB_FILE}; deleted 2 finished "
                                     "shard(s)")  # one closed, one whose writer is gone
    assert shard_paths(cache_dir) == [] and count_entries(cache_dir) == stored
