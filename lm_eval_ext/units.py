"""PURE: memory sizes: ``"20GiB"``, ``"24GB"``, ``"80G"`` <-> bytes. Bytes are ints everywhere inside.
Durations: ``"2h"``, ``"1h30m"``, ``"90m"``, ``"02:00:00"`` (SLURM's spelling) <-> seconds.

Binary units (KiB, MiB, GiB, TiB) are powers of 1024; decimal units (KB, MB, GB, TB) powers of
1000, as vendors label cards. A bare letter (``"80G"``) follows accelerate's ``max_memory``
reading of the same spelling: decimal. A plain number is bytes.
"""

from __future__ import annotations

import re

from lm_eval_ext.errors import UserError

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

_FACTORS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": TiB,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int, *, what: str = "size") -> int:
    """``"20GiB"`` -> 21474836480. Raises :class:`UserError` naming ``what`` on a bad spelling."""
    if isinstance(text, bool):
        raise UserError(f"{what}={text!r} is not a memory size; write e.g. 24GiB or 80GB")
    if isinstance(text, int):
        if text < 0:
            raise UserError(f"{what}={text} must not be negative")
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise UserError(f"{what}={text!r} is not a memory size; write e.g. 24GiB, 80GB or 16G")
    number, unit = match.groups()
    factor = _FACTORS.get(unit.lower())
    if factor is None:
        raise UserError(
            f"{what}={text!r} has unknown unit '{unit}'; use one of "
            "B, KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000)"
        )
    return int(round(float(number) * factor))


def format_bytes(num_bytes: int) -> str:
    """Bytes -> the shortest readable binary spelling, e.g. ``25.5 GiB``; parseable back."""
    if num_bytes < 0:
        return "-" + format_bytes(-num_bytes)
    for unit, factor in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if num_bytes >= factor:
            value = num_bytes / factor
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{num_bytes} B"


_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d*)?)\s*([dhms]))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)\s*([dhms])")
_CLOCK = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?$")


def parse_duration(text: str, *, what: str = "--time-limit") -> float:
    """``"2h"`` -> 7200.0; also ``1h30m``, ``90m``, ``45s``, a bare number of seconds, and SLURM's
    ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``. Raises :class:`UserError` naming ``what`` on anything else."""
    spelled = str(text).strip().lower().replace(" ", "")
    seconds: float | None = None
    if re.fullmatch(r"\d+(?:\.\d*)?", spelled):
        seconds = float(spelled)
    elif _DURATION.match(spelled):
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(spelled))
    elif (clock := _CLOCK.match(spelled)) is not None and (":" in spelled or "-" in spelled):
        days, first, second, third = clock.groups()
        if days is None and third is None:  # SLURM: MM:SS
            seconds = int(first) * 60 + int(second)
        else:  # HH:MM:SS, or after D-: HH[:MM[:SS]]
            seconds = int(days or 0) * 86400 + int(first) * 3600 + int(second or 0) * 60 + int(third or 0)
    if seconds is None or seconds <= 0:
        raise UserError(f"{what} {text!r} is not a duration; write e.g. 2h, 1h30m, 90m, 3600 (seconds) or 02:00:00")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds -> ``4.2 s``, ``12 min``, ``3.5 h``: the unit a person reads a bill in."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
