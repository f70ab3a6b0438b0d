"""PURE: the lines of a shard file (``cache/shards.py``): an entry, a model, or the writer's end.

A line is tab-separated text ending in the CRC32 of everything before its last tab, then ``\\n``::

    E <key> <fingerprint> <request type> <compute_s> <created_s> <value json> <args json> <crc>
    M <fingerprint> <label json> <created_s> <identity json> <crc>
    X <created_s> <crc>                      (the writer closed the file: it will not grow)

JSON never holds a raw tab or newline, so the fields split cleanly. A line is committed once its
``\\n`` is written (and fsynced); bytes after the last ``\\n`` are a line still being written or cut
by a kill, and a line whose CRC does not match (a kill mid-write, or another host's view of a file
that is still being appended to) is skipped: its request is computed again, nothing is reported as
damaged. Only :func:`parse_shard`'s ``unreadable`` offsets tell ``cache verify`` where they were.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

ENTRY, MODEL, END = "E", "M", "X"


def _line(*fields: str) -> bytes:
    body = "\t".join(fields).encode("utf-8")
    return body + b"\t" + f"{zlib.crc32(body):08x}".encode() + b"\n"


def entry_line(key: str, fingerprint: str, request_type: str, args_json: str, value_json: str, compute_s: float,
               created_s: float) -> bytes:
    return _line(ENTRY, key, fingerprint, request_type, repr(float(compute_s)), repr(float(created_s)), value_json,
                 args_json)


def model_line(fingerprint: str, label_json: str, identity_json: str, created_s: float) -> bytes:
    return _line(MODEL, fingerprint, label_json, repr(float(created_s)), identity_json)


def end_line(created_s: float) -> bytes:
    return _line(END, repr(float(created_s)))


@dataclass(frozen=True)
class ShardEntry:
    key: str
    fingerprint: str
    request_type: str
    compute_s: float
    created_s: float
    value_json: str
    args_json: str


@dataclass
class ShardRead:
    """What one read of a shard found, from byte ``start`` on."""

    entries: list[ShardEntry] = field(default_factory=list)
    models: list[tuple[str, str, str, float]] = field(default_factory=list)
    """``(fingerprint, label json, identity json, created_s)``"""
    ended: bool = False
    end_offset: int = 0
    """where the whole lines read end (the next read starts here)"""
    first_unreadable: int | None = None
    """offset of the first whole line that did not check out (``None``: every line did)"""
    unreadable: list[int] = field(default_factory=list)
    torn_tail_bytes: int = 0
    """bytes after the last newline: a line being written, or cut by a kill"""


def _decode(raw: bytes) -> list[str] | None:
    body, sep, crc = raw.rpartition(b"\t")
    if not sep or len(crc) != 8:
        return None
    try:
        if zlib.crc32(body) != int(crc, 16):
            return None
        return body.decode("utf-8").split("\t")
    except ValueError:  # not hex, not UTF-8
        return None


def _take(fields: list[str], read: ShardRead) -> bool:
    kind = fields[0]
    try:
        if kind == ENTRY and len(fields) == 8:
            read.entries.append(ShardEntry(fields[1], fields[2], fields[3], float(fields[4]), float(fields[5]),
                                           fields[6], fields[7]))
        elif kind == MODEL and len(fields) == 5:
            read.models.append((fields[1], fields[2], fields[4], float(fields[3])))
        elif kind == END and len(fields) == 2:
            read.ended = True
        else:
            return False
    except ValueError:
        return False
    return True


def parse_shard(data: bytes, start: int = 0) -> ShardRead:
    """Every committed line of ``data`` (a shard's bytes from offset ``start``); see the module docstring."""
    read = ShardRead(end_offset=start)
    position = 0
    while True:
        newline = data.find(b"\n", position)
        if newline < 0:
            break
        fields = _decode(data[position:newline])
        if fields is None or not _take(fields, read):
            read.unreadable.append(start + position)
            if read.first_unreadable is None:
                read.first_unreadable = start + position
        position = newline + 1
    read.end_offset = start + position
    read.torn_tail_bytes = len(data) - position
    return read
