"""The SQLite request store and the pure key/value rules, on real files."""

import hashlib
import math
import os
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from lm_eval_ext.cache.store import DB_FILE, CacheFileError, Entry, RequestStore, default_cache_dir
from lm_eval_ext.errors import UserError
from lm_eval_ext.cache.keys import CachedValueError, decode_value, encode_value, is_cacheable, request_key


def entry(index: int, fingerprint: str = "fp", value=None) -> Entry:
    value = (-1.0 / (index + 3), index % 2 == 0) if value is None else value
    return Entry(f"key{index}", fingerprint, "loglikelihood", f'["c{index}","x"]',
                 encode_value("loglikelihood", value), 0.01)


def test_floats_round_trip_bit_exactly_through_the_store(tmp_path):
    values = [-1e-300, -2.5e-8, -0.1, -1 / 3, -123456.789012345678, -math.inf, 0.0, -5e-324]
    store = RequestStore.open(tmp_path)
    store.put_many([entry(i, value=(v, True)) for i, v in enumerate(values)])
    found = store.get_many([f"key{i}" for i in range(len(values))])
    for index, value in enumerate(values):
        decoded = decode_value("loglikelihood", found[f"key{index}"][0])
        assert struct.pack("<d", decoded[0]) == struct.pack("<d", value)
    assert math.isnan(decode_value("loglikelihood_rolling", encode_value("loglikelihood_rolling", math.nan)))


def test_existing_key_keeps_its_first_value_and_missing_keys_are_absent(tmp_path):
    store = RequestStore.open(tmp_path)
    store.put_many([entry(1, value=(-1.5, True))])
    store.put_many([entry(1, value=(-9.0, False))])
    found = store.get_many(["key1", "nope"])
    assert list(found) == ["key1"]
    assert decode_value("loglikelihood", found["key1"][0]) == (-1.5, True)


def test_many_keys_are_looked_up_past_sqlite_parameter_limits(tmp_path):
    store = RequestStore.open(tmp_path)
    store.put_many([entry(i) for i in range(2500)])
    assert len(store.get_many([f"key{i}" for i in range(3000)])) == 2500


def test_keys_depend_on_model_type_and_arguments_but_not_dict_order():
    gen_a = ("ctx", {"until": ["\n"], "do_sample": False, "max_gen_toks": 8})
    gen_b = ("ctx", {"max_gen_toks": 8, "do_sample": False, "until": ["\n"]})
    assert request_key("fp", "generate_until", gen_a) == request_key("fp", "generate_until", gen_b)
    assert request_key("fp", "generate_until", gen_a) != request_key("fp2", "generate_until", gen_a)
    assert request_key("fp", "loglikelihood", ("a", "b")) != request_key("fp", "loglikelihood", ("a", "bb"))
    assert request_key("fp", "loglikelihood", ("a", "b")) != request_key("fp", "loglikelihood_rolling", ("a", "b"))
    with pytest.raises(ValueError, match="unknown request type 'multiple_choice'"):
        request_key("fp", "multiple_choice", ("a",))


@pytest.mark.parametrize(
    ("gen_kwargs", "cacheable"),
    [
        ({"do_sample": False}, True),
        ({}, True),
        ({"temperature": 0.0}, True),
        ({"do_sample": True}, False),
        ({"temperature": 0.7}, False),  # lm-eval samples when temperature > 0 and do_sample is unset
        ({"do_sample": True, "seed": 1234}, True),
        ({"do_sample": True, "seed": True}, False),
        ({"temperature": "hot"}, False),
    ],
)
def test_sampled_generations_are_cached_only_with_a_seed(gen_kwargs, cacheable):
    assert is_cacheable("generate_until", ("ctx", gen_kwargs)) is cacheable
    assert (request_key("fp", "generate_until", ("ctx", gen_kwargs)) is not None) is cacheable


def test_arguments_json_cannot_carry_are_not_cached():
    assert request_key("fp", "loglikelihood", ("ctx", object())) is None


@pytest.mark.parametrize(
    ("request_type", "text", "message"),
    [
        ("loglikelihood", "[1.0]", "wrong shape"),
        ("loglikelihood", '[-1.0, "yes"]', "wrong shape"),
        ("loglikelihood_rolling", '"x"', "wrong shape"),
        ("generate_until", "3", "wrong shape"),
        ("generate_until", "{not json", "not JSON"),
    ],
)
def test_values_of_the_wrong_shape_are_refused(request_type, text, message):
    with pytest.raises(CachedValueError, match=message):
        decode_value(request_type, text)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_cache_directory_names_the_fix(tmp_path):
    RequestStore.open(tmp_path).close()
    (tmp_path / DB_FILE).chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(UserError, match="cache_dir=A_WRITABLE_DIR, cache=read"):
            RequestStore.open(tmp_path).put_many([entry(1)])
    finally:
        tmp_path.chmod(0o755)


def test_cache_directory_that_cannot_be_created_names_the_fix(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot create cache directory .* cache=off"):
        RequestStore.open(tmp_path / "file" / "sub")


def test_default_cache_dir_prefers_the_environment_variable(tmp_path):
    assert default_cache_dir({"LM_EVAL_EXT_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert default_cache_dir({"XDG_CACHE_HOME": "/x"}).as_posix() == "/x/lm_eval_ext"
    assert default_cache_dir({}).as_posix().endswith("/.cache/lm_eval_ext")


# ------------------------------------------------------------------ damaged and foreign files


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _filled_db(tmp_path):
    store = RequestStore.open(tmp_path)
    store.put_many([entry(i) for i in range(3000)])
    store.close()
    return tmp_path / DB_FILE


def _damage(kind, tmp_path):
    path = tmp_path / DB_FILE
    if kind == "garbage":
        path.write_bytes(b"\x89PNG not a database at all" * 100)
    elif kind == "truncated_header":
        path.write_bytes(_filled_db(tmp_path).read_bytes()[:50])
    elif kind == "truncated_half":
        data = _filled_db(tmp_path).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign_sqlite":  # e.g. lm-eval's own --use_cache file (sqlitedict)
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE unnamed (key TEXT PRIMARY KEY, value BLOB)")
        db.commit()
        db.close()
    elif kind == "newer_schema":
        _filled_db(tmp_path)
        db = sqlite3.connect(path)
        db.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
        db.commit()
        db.close()
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("garbage", "is not an SQLite file"),
        ("truncated_header", "is truncated"),
        ("truncated_half", "is truncated"),
        ("foreign_sqlite", "written by another program"),
        ("newer_schema", "schema version 99"),
    ],
)
def test_damaged_or_foreign_file_is_refused_and_left_untouched(tmp_path, kind, message):
    path = _damage(kind, tmp_path)
    before = _digest(path)
    with pytest.raises(CacheFileError, match=message) as raised:
        RequestStore.open(tmp_path)
    assert f"mv '{path}' '{path}.bad'" in str(raised.value)
    assert "cache=off" in str(raised.value)
    assert _digest(path) == before


def test_cli_reports_a_damaged_file_in_one_line_without_traceback(tmp_path):
    path = _damage("garbage", tmp_path)
    before = _digest(path)
    done = subprocess.run([sys.executable, "-m", "lm_eval_ext.cli", "cache", "--cache-dir", str(tmp_path), "stats"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "is not an SQLite file" in done.stderr
    assert _digest(path) == before


# ------------------------------------------------------------------ concurrency

WRITER = textwrap.dedent("""
    import os, sys, time
    from lm_eval_ext.cache.store import Entry, RequestStore
    from lm_eval_ext.cache.keys import encode_value
    writer, batches, per_batch, cache_dir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    while not os.path.exists(os.path.join(cache_dir, "start")):  # all four begin together
        time.sleep(0.005)
    store = RequestStore.open(cache_dir)
    for batch in range(batches):
        rows = [Entry(f"w{writer}-{batch}-{i}", "fp", "loglikelihood_rolling", "[]",
                      encode_value("loglikelihood_rolling", -(writer * 1e6 + batch * 1e3 + i) / 7), 0.0)
                for i in range(per_batch)]
        store.put_many(rows)
        store.get_many([f"w{(writer + 1) % 4}-{batch}-{i}" for i in range(per_batch)])
        store.count_hits([r.key for r in rows[:3]])
""")


def test_four_processes_writing_at_once_lose_nothing_and_never_see_a_lock_error(tmp_path):
    batches, per_batch = 150, 20
    workers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(w), str(batches), str(per_batch), str(tmp_path)],
                         stderr=subprocess.PIPE, text=True)
        for w in range(4)
    ]
    time.sleep(0.5)
    (tmp_path / "start").touch()  # the database does not exist yet: the four also race to create it
    errors = [worker.communicate(timeout=120)[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0, 0, 0], errors
    assert not any("locked" in e for e in errors)
    store = RequestStore.open(tmp_path)
    keys = [f"w{w}-{b}-{i}" for w in range(4) for b in range(batches) for i in range(per_batch)]
    found = store.get_many(keys)
    assert len(found) == 4 * batches * per_batch
    assert decode_value("loglikelihood_rolling", found["w3-149-19"][0]) == -(3e6 + 149e3 + 19) / 7
    assert store.query("SELECT SUM(hits) FROM entries")[0][0] == 4 * batches * 3
