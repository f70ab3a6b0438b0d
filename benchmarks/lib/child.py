"""EDGE: the entry point of every child process the instrument starts (see :mod:`benchmarks.lib.launch`).

    python benchmarks/lib/child.py SPEC.json

``SPEC`` is ``{"target": "module:function", "kwargs": {...}, "out": PATH or null}``: the target is
called with the keyword arguments and, when ``out`` is given, rank 0 writes its JSON result there
(atomically). Started plainly, under ``accelerate launch``, or with another venv's interpreter: the
checkout is put first on ``sys.path``, so ``benchmarks`` and this checkout's ``lm_eval_ext`` import.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def call(target: str, kwargs: dict):
    module_name, _, function_name = target.partition(":")
    return getattr(importlib.import_module(module_name), function_name)(**kwargs)


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    result = call(spec["target"], spec.get("kwargs") or {})
    if spec.get("out") and int(os.environ.get("RANK", "0")) == 0:
        out = Path(spec["out"])
        partial = out.with_suffix(".partial")
        partial.write_text(json.dumps(result, default=str))
        partial.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
