"""``lm-eval-ext cache stats|verify|clear|export`` on a real store (in-process through cli.main)."""

import json
import sqlite3
import time

import pytest

from lm_eval_ext import cli
from lm_eval_ext.cache.store import DB_FILE, Entry, RequestStore
from lm_eval_ext.cache.keys import encode_value, request_key


def _fill(cache_dir, label, fingerprint, count, created_s=None):
    store = RequestStore.open(cache_dir)
    store.register_model(fingerprint, label, "{}")
    entries = []
    for index in range(count):
        args = [f"ctx {label} {index}", " cont"]
        entries.append(Entry(request_key(fingerprint, "loglikelihood", args), fingerprint, "loglikelihood",
                             json.dumps(args), encode_value("loglikelihood", (-0.5 * index, True)), 0.1))
    store.put_many(entries)
    if created_s is not None:
        store._db.execute("UPDATE entries SET created_s = ? WHERE fingerprint = ?", (created_s, fingerprint))
    store.close()


@pytest.fixture
def cache_dir(tmp_path):
    _fill(tmp_path, "model-a", "a" * 64, 5, created_s=time.time() - 10 * 86400)
    _fill(tmp_path, "model-b", "b" * 64, 3)
    return tmp_path


def run(capsys, *argv):
    code = cli.main(["cache", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_stats_lists_entries_per_model_and_type(cache_dir, capsys):
    code, out, _ = run(capsys, "--cache-dir", str(cache_dir), "stats")
    assert code == 0
    assert "model-a" in out and "model-b" in out and "8 entries" in out
    line_a = next(line for line in out.splitlines() if line.startswith("model-a"))
    assert line_a.split()[2:4] == ["loglikelihood", "5"]


def test_export_writes_one_json_line_per_entry(cache_dir, capsys, tmp_path):
    target = tmp_path / "out.jsonl"
    code, out, _ = run(capsys, "--cache-dir", str(cache_dir), "export", "--model", "model-b", "-o", str(target))
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert code == 0 and "exported 3 entries" in out
    assert {row["model"] for row in rows} == {"model-b"}
    assert sorted(row["value"][0] for row in rows) == [-1.0, -0.5, 0.0]
    assert {row["args"][1] for row in rows} == {" cont"}


def test_clear_by_model_and_by_age(cache_dir, capsys):
    assert run(capsys, "--cache-dir", str(cache_dir), "clear", "--older-than", "2000-01-01")[1].startswith("deleted 0")
    week_ago = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 7 * 86400))
    assert "deleted 5 entries" in run(capsys, "--cache-dir", str(cache_dir), "clear", "--older-than", week_ago)[1]
    assert "deleted 3 entries" in run(capsys, "--cache-dir", str(cache_dir), "clear", "--model", "bbbb")[1]
    assert RequestStore.open(cache_dir).query("SELECT COUNT(*) FROM models")[0][0] == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["clear"], "cache clear needs --all, --model NAME or --older-than DATE"),
        (["clear", "--older-than", "last tuesday"], "is not a date; use ISO form"),
        (["clear", "--model", "nope"], "matches no model in the cache; known models: model-a, model-b"),
        (["export", "--model", "nope"], "matches no model"),
    ],
)
def test_bad_cli_input_is_one_clear_message(cache_dir, capsys, argv, message):
    code, _, err = run(capsys, "--cache-dir", str(cache_dir), *argv)
    assert code == 2 and message in err


def test_missing_cache_is_reported(tmp_path, capsys):
    code, _, err = run(capsys, "--cache-dir", str(tmp_path / "none"), "stats")
    assert code == 2 and "no request cache at" in err


def test_verify_finds_entries_whose_key_or_value_was_tampered_with(cache_dir, capsys):
    code, out, _ = run(capsys, "--cache-dir", str(cache_dir), "verify", "--sample", "0")
    assert code == 0 and "integrity: ok" in out
    db = sqlite3.connect(cache_dir / DB_FILE)
    db.execute("UPDATE entries SET args_json = '[\"edited\", \" cont\"]' WHERE rowid = 1")
    db.execute("UPDATE entries SET value_json = '[1.0]' WHERE rowid = 2")
    db.commit()
    db.close()
    code, out, _ = run(capsys, "--cache-dir", str(cache_dir), "verify", "--sample", "0")
    assert code == 1 and "2 problems" in out
    assert "key does not match its stored arguments" in out and "wrong shape" in out


# issue 16: every CLI mistake is one line naming what was typed; reading never writes

def message(err: str) -> str:
    """The one error line without the program name (argparse names it after sys.argv[0])."""
    assert err.count("\n") == 1 and ": error: " in err, err
    return err.split(": error: ", 1)[1].rstrip("\n")


def test_export_to_a_directory_is_one_line(cache_dir, capsys, tmp_path):
    code, _, err = run(capsys, "--cache-dir", str(cache_dir), "export", "-o", str(tmp_path))
    assert code == 2
    assert message(err) == (f"cache export -o {tmp_path}: that is a directory; name a file, "
                   f"e.g. -o {tmp_path / 'cache.jsonl'}")


def test_export_into_a_missing_folder_is_one_line(cache_dir, capsys, tmp_path):
    target = tmp_path / "missing" / "parent" / "file.jsonl"
    code, _, err = run(capsys, "--cache-dir", str(cache_dir), "export", "-o", str(target))
    assert code == 2
    assert message(err) == (f"cache export -o {target}: the folder {target.parent} does not "
                   f"exist; create it (mkdir -p {target.parent}) or choose another path")
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("action", ["stats", "verify", "export"])
def test_reading_a_zero_byte_cache_file_leaves_it_zero_bytes(tmp_path, capsys, action):
    (tmp_path / DB_FILE).write_bytes(b"")
    code, _, err = run(capsys, "--cache-dir", str(tmp_path), action)
    assert code == 2
    assert message(err) == (f"no request cache at {tmp_path / DB_FILE} (it is an empty file); "
                   "run an evaluation with cache enabled first")
    assert (tmp_path / DB_FILE).stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == [DB_FILE]


def test_a_cache_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    code, _, err = run(capsys, "--cache-dir", str(not_a_dir), "stats")
    assert code == 2 and message(err) == (f"cache directory {not_a_dir} is a file, not a "
                                 "directory; pass cache_dir=A_DIRECTORY or cache=off in model_args")


def test_stats_and_export_read_a_cache_on_read_only_storage(cache_dir, capsys, tmp_path):
    """WAL side files cannot be created there: the store opens immutable and still reads every entry."""
    import os

    for side in cache_dir.glob(DB_FILE + "-*"):
        side.unlink()
    os.chmod(cache_dir, 0o555)
    try:
        if os.access(cache_dir, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        code, out, err = run(capsys, "--cache-dir", str(cache_dir), "stats")
        assert code == 0 and "8 entries" in out, err
        assert sorted(p.name for p in cache_dir.iterdir()) == [DB_FILE]
    finally:
        os.chmod(cache_dir, 0o755)
