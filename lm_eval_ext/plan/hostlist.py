"""PURE: SLURM host lists (``SLURM_NODELIST``) expanded the way ``scontrol show hostnames`` does,
without ``scontrol`` (a task may run where the SLURM client tools are not installed).

Worked example: ``gpu[01-03,07],login-a`` is ``gpu01 gpu02 gpu03 gpu07 login-a``: commas outside
brackets separate hosts, a bracket holds comma-separated numbers or ranges, a range keeps the width
of its first number (``[08-10]`` gives ``08 09 10``), and several brackets in one name multiply
(``r[1-2]n[1-2]`` is ``r1n1 r1n2 r2n1 r2n2``).
"""

from __future__ import annotations

import itertools


class HostListError(ValueError):
    """Text that SLURM would not write as a host list."""


def _split_top_level(text: str) -> list[str]:
    """``a[1,2],b`` -> ``["a[1,2]", "b"]``: commas inside brackets belong to the bracket."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
            if depth > 1:
                raise HostListError(f"nested '[' at position {index}")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise HostListError(f"']' without '[' at position {index}")
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if depth:
        raise HostListError("'[' without ']'")
    parts.append(text[start:])
    return parts


def _numbers(bracket: str) -> list[str]:
    """``01-03,7`` -> ``["01", "02", "03", "7"]``."""
    out = []
    for item in bracket.split(","):
        low, sep, high = item.strip().partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise HostListError(f"'[{bracket}]' holds {item!r}, not a number or a range like 01-04")
        if not sep:
            out.append(low)
            continue
        if int(high) < int(low):
            raise HostListError(f"range {item!r} runs backwards")
        out.extend(str(number).zfill(len(low)) for number in range(int(low), int(high) + 1))
    return out


def _expand_one(pattern: str) -> list[str]:
    """One host pattern (no top-level comma): literal pieces and brackets, multiplied out."""
    pieces: list[list[str]] = []
    rest = pattern
    while "[" in rest:
        head, _, tail = rest.partition("[")
        bracket, _, rest = tail.partition("]")
        pieces += [[head], _numbers(bracket)]
    pieces.append([rest])
    return ["".join(parts) for parts in itertools.product(*pieces)]


def expand_hostlist(text: str) -> list[str]:
    """Every host of ``text`` in order; :class:`HostListError` for text SLURM would not write."""
    text = text.strip()
    if not text:
        raise HostListError("it is empty")
    hosts = []
    for pattern in _split_top_level(text):
        if not pattern.strip():
            raise HostListError("it has an empty entry between commas")
        hosts.extend(_expand_one(pattern.strip()))
    return hosts


def first_host(text: str) -> str:
    """The first host of a host list: where rank 0 runs under ``srun`` (block distribution)."""
    return expand_hostlist(text)[0]


def tasks_on_node(tasks_per_node: str, node_index: int) -> int | None:
    """Tasks on node ``node_index`` from ``SLURM_TASKS_PER_NODE`` (``2(x3),1``: two tasks on each
    of the first three nodes, one on the fourth); ``None`` when the text says nothing about it."""
    counts: list[int] = []
    for item in tasks_per_node.split(","):
        count, _, repeat = item.strip().partition("(x")
        if not count.isdigit() or (repeat and not repeat.rstrip(")").isdigit()):
            return None
        counts += [int(count)] * (int(repeat.rstrip(")")) if repeat else 1)
    return counts[node_index] if 0 <= node_index < len(counts) else None
