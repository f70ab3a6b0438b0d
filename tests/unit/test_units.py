import pytest

from lm_eval_ext.errors import UserError
from lm_eval_ext.units import GiB, format_bytes, parse_bytes


@pytest.mark.parametrize("text, expected", [
    ("20GiB", 20 * GiB), ("24GB", 24 * 10**9), ("80G", 80 * 10**9), ("512MiB", 512 * 2**20),
    ("1.5GiB", int(1.5 * GiB)), (" 2 TiB ", 2 * 2**40), ("1000", 1000), ("16gib", 16 * GiB), ("7KB", 7000),
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


def test_int_passes_through():
    assert parse_bytes(12345) == 12345


@pytest.mark.parametrize("text, fragment", [
    ("lots", "is not a memory size"), ("24 parsecs", "unknown unit 'parsecs'"), ("-3GiB", "is not a memory size"),
    ("GiB", "is not a memory size"), ("", "is not a memory size"),
])
def test_bad_sizes_name_the_value_and_fix(text, fragment):
    with pytest.raises(UserError) as info:
        parse_bytes(text, what="--gpus")
    assert fragment in str(info.value)
    assert "--gpus" in str(info.value)


def test_negative_and_bool_ints_are_refused():
    with pytest.raises(UserError, match="must not be negative"):
        parse_bytes(-1)
    with pytest.raises(UserError, match="not a memory size"):
        parse_bytes(True)


@pytest.mark.parametrize("num_bytes", [0, 1023, 5 * 2**20, 24 * GiB, 141 * 10**9, 3 * 2**40])
def test_format_round_trips_within_rounding(num_bytes):
    text = format_bytes(num_bytes).replace(" ", "")
    assert abs(parse_bytes(text) - num_bytes) <= max(1, num_bytes * 0.005)


def test_format_examples():
    assert format_bytes(24 * GiB) == "24.0 GiB"
    assert format_bytes(512) == "512 B"


@pytest.mark.parametrize("text, seconds", [("2h", 7200), ("1h30m", 5400), ("90m", 5400), ("45s", 45), ("0.5h", 1800),
                                           ("3600", 3600), ("02:00:00", 7200), ("30:00", 1800), ("1-00:00", 86400),
                                           ("1-2", 93600)])
def test_durations_in_the_spellings_people_and_slurm_use(text, seconds):
    from lm_eval_ext.units import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "2x", "", "0", "h", "1-", "::", "1:2:3:4", "-5"])
def test_duration_garbage_is_one_line_naming_the_flag(text):
    from lm_eval_ext.units import parse_duration

    with pytest.raises(UserError) as failure:
        parse_duration(text)
    assert str(failure.value).startswith(f"--time-limit {text!r} is not a duration; write e.g. 2h")


def test_format_duration_picks_the_unit():
    from lm_eval_ext.units import format_duration

    assert (format_duration(4.24), format_duration(720), format_duration(12600)) == ("4.2 s", "12.0 min", "3.5 h")
