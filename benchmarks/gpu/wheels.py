"""Which wheels the GPU machine needs for lm-eval: every requirement of ``lm-eval`` (recursively,
no extras, markers evaluated for Python 3.12 on Linux) that its image lacks, pinned to the version
installed in *this* environment, so the GPU runs the combination tested here.

    python benchmarks/gpu/wheels.py            # prints NAME==VERSION lines (fetch_wheels.sh reads them)

The image's package list is ``gpu_image_packages.txt`` (from the device tool's KINDS.md).
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement

HERE = Path(__file__).resolve().parent
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
              "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
#: carried even though the image has some version: datasets caps fsspec, and a small pure wheel
#: pinned to the tested version is cheaper than a failed 10-minute call. (pyarrow, 55 MB, cannot
#: travel in a 64 MiB call: run_gpu_suite.sh checks the image's pyarrow instead.)
ALWAYS_CARRY = {"fsspec"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages(path: Path = HERE / "gpu_image_packages.txt") -> set[str]:
    words = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            words += line.split()
    return {normalize(w) for w in words}


def requirements_of(name: str) -> list[str]:
    """Names this installed distribution needs on the target (extras and non-matching markers skipped)."""
    out = []
    for text in importlib.metadata.requires(name) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(TARGET_ENV):
            out.append(req.name)
    return out


def missing_closure(root: str, present: set[str]) -> dict[str, str]:
    """``{name: installed version}`` for ``root`` and everything it pulls in that ``present`` lacks."""
    todo, seen, out = [root], set(), {}
    while todo:
        name = normalize(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        if name in present and name not in ALWAYS_CARRY:
            continue
        out[name] = importlib.metadata.version(name)
        todo.extend(requirements_of(name))
    return out


def main() -> int:
    for name, version in sorted(missing_closure("lm-eval", image_packages()).items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
