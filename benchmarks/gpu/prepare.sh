#!/usr/bin/env bash
# Run HERE (a machine with pip access), from anywhere: fills the two folders the GPU call carries.
#   .whl/        lm-eval 0.4.13 and every requirement the GPU image lacks (benchmarks/gpu/wheels.py),
#                Python 3.12 manylinux wheels; sdist-only pure-Python packages are built into wheels here.
#   .gpu_carry/  SmolLM2-135M's config and tokenizer (3.5 MB; its 538 MB of weights cannot travel:
#                the device call carries 64 MiB), from which build_gpu_model.py builds the architecture.
# Both are git-ignored. Needs the project venv (for the pinned versions) and .models/smollm2-135m.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
cd "$ROOT"
rm -rf .whl .gpu_carry && mkdir -p .whl .gpu_carry/smollm2-135m-shape
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64)
for spec in $("$PY" benchmarks/gpu/wheels.py); do
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d .whl "$spec" 2>/dev/null; then
    echo "no 3.12 wheel for $spec on the index: building a pure-Python wheel here"
    "$PY" -m pip wheel -q --no-deps --no-binary=:all: -w .whl "$spec"
  fi
done
for whl in .whl/*.whl; do  # a wheel built here must not be tied to this machine's Python
  case "$whl" in *-cp311-*|*linux_x86_64.whl) echo "not portable to Python 3.12: $whl" >&2; exit 1;; esac
done
MODEL="$ROOT/.models/smollm2-135m"
[ -f "$MODEL/.complete" ] || "$PY" scripts/build_models.py smollm2-135m
for f in config.json generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja; do
  [ -f "$MODEL/$f" ] && cp "$MODEL/$f" .gpu_carry/smollm2-135m-shape/
done
du -sh .whl .gpu_carry
total_kib=$(du -sk .whl .gpu_carry | awk '{s+=$1} END {print s}')
if [ "$total_kib" -gt $((56 * 1024)) ]; then
  echo "carried folders are ${total_kib} KiB: over the 56 MiB left for them in a 64 MiB device call" >&2; exit 1
fi
echo "ready: carry [.whl, .gpu_carry] and run: bash benchmarks/gpu/run_gpu_suite.sh"
