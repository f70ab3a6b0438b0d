#!/usr/bin/env bash
# Install torch into the venv whose python is $1, without a multi-GB CUDA download on CPU machines.
#  - CUDA machine (nvidia-smi answers): torch from PyPI (CUDA build).
#  - CPU machine: a local CPU wheel when PIP_FIND_LINKS holds one (this project's machines do),
#    else the CPU build from PyTorch's CPU index.
set -euo pipefail
py="$1"
version="$(grep -E '^torch==' "$(dirname "$0")/../constraints/cpu.txt" | cut -d= -f3)"
if "$py" -c "import torch" 2>/dev/null; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  exec "$py" -m pip install -q "torch==${version}"
fi
for dir in ${PIP_FIND_LINKS:-}; do
  if ls "$dir"/torch-"${version}"+cpu-*.whl >/dev/null 2>&1; then
    exec "$py" -m pip install -q "torch==${version}"
  fi
done
exec "$py" -m pip install -q "torch==${version}+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
