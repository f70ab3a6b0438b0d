"""The GPU check's own summary: ``gpu_check.json`` and ``gpu_check.md`` under OUT, from pytest's
junit XML and run.py's results.json (both written by ``run_gpu_suite.sh``).

    python benchmarks/gpu/summarize.py OUT TESTS_RC BENCH_RC WALL_S
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def test_outcomes(junit: Path) -> list[dict]:
    """One record per test case: name, outcome (passed/failed/error/skipped), message."""
    if not junit.exists():
        return []
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (found.get("message") or "")[:300]
        cases.append({"name": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": message})
    return cases


def scenario_outcomes(results: Path) -> tuple[dict, dict]:
    if not results.exists():
        return {}, {}
    data = json.loads(results.read_text())
    scenarios = {name: {"status": s.get("status"), "reason": s.get("reason"), "rows": len(s.get("rows") or [])}
                 for name, s in (data.get("scenarios") or {}).items()}
    return scenarios, data.get("machine") or {}


def render(summary: dict) -> str:
    gpus = summary["machine"].get("gpus") or "none"
    lines = [f"# GPU check ({summary['wall_s']} s)", "", f"GPUs: {gpus}", "",
             f"pytest -m gpu: exit {summary['tests_exit_code']}; run.py --suite gpu: exit {summary['bench_exit_code']}",
             "", "| test | outcome | s | message |", "|---|---|---|---|"]
    lines += [f"| {t['name']} | {t['outcome']} | {t['seconds']:.1f} | {t['message'][:120]} |" for t in summary["tests"]]
    lines += ["", "| scenario | status | rows | reason |", "|---|---|---|---|"]
    lines += [f"| {n} | {s['status']} | {s['rows']} | {s['reason'] or ''} |" for n, s in summary["scenarios"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    out, tests_rc, bench_rc, wall_s = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])
    scenarios, machine = scenario_outcomes(out / "results.json")
    summary = {"tests_exit_code": tests_rc, "bench_exit_code": bench_rc, "wall_s": wall_s, "machine": machine,
               "tests": test_outcomes(out / "pytest.xml"), "scenarios": scenarios}
    counts = {}
    for test in summary["tests"]:
        counts[test["outcome"]] = counts.get(test["outcome"], 0) + 1
    summary["test_counts"] = counts
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "gpu_check.md").write_text(render(summary))
    sys.stdout.write(f"gpu check: tests {counts}, scenarios "
                     f"{ {n: s['status'] for n, s in scenarios.items()} }, {wall_s} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
