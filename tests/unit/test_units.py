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
