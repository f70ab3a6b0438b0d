"""The documentation's figures, generated from results JSON (``run.py --docs``, ``make bench-docs``).

A figure in README.md, docs/*.md or benchmarks/README.md is a block between two markers, each
alone on its line::

    <!-- bench:SCENARIO[:ROW][@RUN] -->
    ... written by this module, never by hand ...
    <!-- /bench -->

``SCENARIO`` is a registered scenario, or ``all`` (the whole table of a run, as its ``table.md``).
``ROW`` picks what of it: rows by their key or a part of their title (several: ``arc,lambada``), one
of the scenario's ``figures`` (``table``), or ``notes``; without it, the scenario's rows, figures and
notes. ``RUN`` pins the run: a suite (``cpu-full``) or the folder its results.json is in
(``real-tasks-200`` for ``benchmarks/results/real-tasks-200/``). Of the runs that qualify, the first
given that holds what the block shows (the scenario, with status ok where one has it; the rows or
figure it names) is used. A block
that no given results hold is left as it is and reported as *pending*, with why (the next run that
measures it regenerates it). A marker naming an unknown scenario, or without its end, fails with
the file and line. Every generated block ends with the command that measures it again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from benchmarks.lib import report

#: markers stand alone on their lines (one quoted in a sentence is not a marker)
OPEN = re.compile(r"^<!-- bench:(?P<spec>\S+) -->$", re.M)
CLOSE = "<!-- /bench -->"
CLOSE_LINE = re.compile(r"^<!-- /bench -->$", re.M)
BLOCK = re.compile(r"^(?P<open><!-- bench:(?P<spec>\S+) -->\n)(?P<body>.*?)(?P<close>^<!-- /bench -->$)", re.S | re.M)


class DocsError(Exception):
    """A marker that cannot be rendered: names the file, the line and what is wrong."""


@dataclass(frozen=True)
class Marker:
    scenario: str
    row: str = ""
    suite: str = ""

    @classmethod
    def parse(cls, spec: str) -> Marker:
        """``SCENARIO[:ROW][@SUITE]`` (PURE)."""
        body, _, suite = spec.partition("@")
        scenario, _, row = body.partition(":")
        return cls(scenario, row, suite)


@dataclass(frozen=True)
class Results:
    path: str
    """As shown in the blocks: relative to the checkout."""
    data: dict


def documents(root: Path) -> list[Path]:
    """The files whose figures are generated: README.md, docs/*.md, benchmarks/README.md."""
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "benchmarks" / "README.md"]
            if p.exists()]


def markers(text: str) -> list[tuple[int, Marker]]:
    """(line number, marker) of every opening marker; raises :class:`DocsError` (``line N``) on one
    without its end."""
    found = []
    for match in OPEN.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        rest = text[match.end():]
        next_open, end = OPEN.search(rest), CLOSE_LINE.search(rest)
        if end is None or (next_open is not None and next_open.start() < end.start()):
            raise DocsError(f"line {line}: <!-- bench:{match['spec']} --> has no {CLOSE} before the next marker")
        found.append((line, Marker.parse(match["spec"])))
    return found


def check(root: Path, known: set[str]) -> list[str]:
    """Every marker of the documents, as ``file:line spec``; raises :class:`DocsError` on a marker
    whose scenario is not in ``known`` (nor ``all``)."""
    seen = []
    for path in documents(root):
        for line, marker in _markers_of(path):
            where = f"{path.relative_to(root)}:{line}"
            if marker.scenario != "all" and marker.scenario not in known:
                raise DocsError(f"{where}: bench marker names unknown scenario {marker.scenario!r}; "
                                f"choose from all, {', '.join(sorted(known))}")
            seen.append(f"{where} {marker.scenario}{':' + marker.row if marker.row else ''}"
                        f"{'@' + marker.suite if marker.suite else ''}")
    return seen


def _markers_of(path: Path) -> list[tuple[int, Marker]]:
    try:
        return markers(path.read_text())
    except DocsError as exc:
        raise DocsError(f"{path}: {exc}") from None


def load(paths: list[Path], root: Path) -> list[Results]:
    """Results JSON written by run.py; a folder stands for every ``*/results.json`` of a run.py run
    below it (``benchmarks/results``: the committed runs), in name order."""
    out = []
    for path in paths:
        found = sorted(path.glob("*/results.json")) if path.is_dir() else [path]
        for one in found:
            data = json.loads(one.read_text())
            if not {"suite", "scenarios"} <= set(data):
                if path.is_dir():
                    continue  # another tool's JSON in the results folder
                raise DocsError(f"{one}: not a results JSON of benchmarks/run.py (no suite and scenarios)")
            shown = one.resolve().relative_to(root) if one.resolve().is_relative_to(root) else one
            out.append(Results(str(shown), data))
    return out


def pick_results(marker: Marker, results: list[Results]) -> tuple[Results | None, str]:
    """The run a block is drawn from (its pinned suite or folder; the first holding the scenario with
    status ok, else the first holding it at all; with a ``ROW``, the first that has it), or ``None``
    and why."""
    candidates = [r for r in results if not marker.suite or marker.suite in (r.data.get("suite"), Path(r.path).parent.name)]
    if marker.scenario == "all":
        return (candidates[0], "") if candidates else (None, f"no results of run {marker.suite or 'any'}")
    holding = [r for r in candidates if marker.scenario in r.data.get("scenarios", {})]
    ok = [r for r in holding if r.data["scenarios"][marker.scenario].get("status") == "ok"]
    if not marker.row:
        return (ok or holding or [None])[0], f"no results hold scenario {marker.scenario}"
    reasons = []
    for source in ok:
        try:
            _render_scenario(marker, source.data["scenarios"][marker.scenario])
            return source, ""
        except DocsError as exc:
            reasons.append(f"{source.path}: {exc}")
    return None, "; ".join(reasons) or f"no results hold scenario {marker.scenario} with status ok"


def reproduce_command(results: dict, scenario: str, path: str = "") -> str:
    """The command that measures ``scenario`` again as this run did; into the same folder of
    ``benchmarks/results/`` when the run is that whole folder (one scenario of a suite's run is
    measured elsewhere: writing it there would drop the others)."""
    command = results.get("command") or f"python benchmarks/run.py --suite {results['suite']}"
    whole = scenario == "all" or set(results.get("scenarios", {})) <= {scenario}
    if scenario != "all" and "--only" not in command:
        command += f" --only {scenario}"
    if whole and path.startswith("benchmarks/results/"):
        command += f" --out {Path(path).parent}"
    return command


def render(marker: Marker, source: Results) -> str:
    """The generated body of one block (PURE); raises :class:`DocsError` on a row or figure the
    scenario does not have."""
    data = source.data
    if marker.scenario == "all":
        body = report.render_table(data).rstrip()
    else:
        outcome = data["scenarios"][marker.scenario]
        body = _render_scenario(marker, outcome)
    machine = data.get("machine", {})
    commit = ((machine.get("git") or {}).get("commit") or "unknown")[:10]
    footer = (f"<sub>Generated by `make bench-docs` (`python benchmarks/run.py --docs ...`) from "
              f"`{source.path}`: suite `{data['suite']}`, {data.get('started_utc', '?')} UTC, commit {commit}. "
              f"Measure again: `{reproduce_command(data, marker.scenario, source.path)}`.</sub>")
    return f"{body}\n\n{footer}\n"


def _render_scenario(marker: Marker, outcome: dict) -> str:
    if outcome.get("status") != "ok":
        return f"`{marker.scenario}` {outcome.get('status')}: {outcome.get('reason', '')}"
    rows, figures, notes = outcome.get("rows") or [], outcome.get("figures") or {}, outcome.get("notes") or []
    if not marker.row:
        parts = [_rows_table(rows)] if rows else []
        parts += [_code(text) for text in figures.values()]
        parts += [_bullets(notes)] if notes else []
        return "\n\n".join(parts)
    if marker.row in figures:
        return _code(figures[marker.row])
    if marker.row == "notes":
        return _bullets(notes)
    chosen = []
    for wanted in marker.row.split(","):
        found = [r for r in rows if r.get("key") == wanted] or [r for r in rows if wanted in r["row"]]
        if not found:
            keys = sorted({r.get("key") or r["row"] for r in rows} | set(figures) | {"notes"})
            raise DocsError(f"scenario {marker.scenario!r} has no row or figure {wanted!r}; choose from {keys}")
        chosen += [r for r in found if r not in chosen]
    return _rows_table(chosen)


def _rows_table(rows: list[dict]) -> str:
    return "\n".join([report.HEADER, report.RULE, *report.table_rows({"scenarios": {"x": {"rows": rows}}})])


def _code(text: str) -> str:
    return f"```\n{text.rstrip()}\n```"


def _bullets(notes: list[str]) -> str:
    return "\n".join(f"- {note.splitlines()[0] if note else ''}" for note in notes)


def rewrite(text: str, results: list[Results], where: str = "") -> tuple[str, list[str]]:
    """``text`` with every block it can regenerate rewritten; also the pending blocks
    (``where:line spec (why)``)."""
    markers(text)  # fails on a marker without its end
    pending: list[str] = []

    def replace(match: re.Match) -> str:
        marker = Marker.parse(match["spec"])
        line = text.count("\n", 0, match.start()) + 1
        source, why = pick_results(marker, results)
        if source is None:
            pending.append(f"{where}:{line} {match['spec']} ({why})")
            return match.group(0)
        return f"{match['open']}{render(marker, source)}{match['close']}"

    return BLOCK.sub(replace, text), pending


def update(root: Path, result_paths: list[Path], known: set[str]) -> tuple[list[str], list[str]]:
    """Rewrite every document's blocks from the results; (files changed, pending blocks)."""
    check(root, known)
    results = load(result_paths, root)
    changed, pending = [], []
    for path in documents(root):
        text = path.read_text()
        new, waiting = rewrite(text, results, str(path.relative_to(root)))
        pending += waiting
        if new != text:
            path.write_text(new)
            changed.append(str(path.relative_to(root)))
    return changed, pending
