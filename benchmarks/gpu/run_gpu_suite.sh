#!/usr/bin/env bash
# Run ON the GPU machine, in the repository root, within one 10-minute device call:
#   device run, carry [".whl", ".gpu_carry"], command: bash benchmarks/gpu/run_gpu_suite.sh
# Installs the carried wheels, builds the models from carried files, runs `--suite gpu` and leaves
# results.json, table.md, speedups.png, run.log and scenarios.tgz under $OUT.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/out/gpu}"; mkdir -p "$OUT"
BUDGET_S="${BENCH_BUDGET_S:-480}"   # the suite's share of the 600 s call (install and model build ~1 min)
MODEL="${BENCH_MODELS_DIR:-$ROOT/.models}/smollm2-135m-shape"
PY="${PY:-python3}"   # the image's python3 holds torch; PY and BENCH_SKIP_INSTALL=1 allow a dry check elsewhere
if [ "${BENCH_SKIP_INSTALL:-0}" != 1 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" | tee "$OUT/run.log"; exit 1; }
fi
export PYTHONPATH="/tmp/site:$ROOT" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# datasets 5.2 needs pyarrow >= 24, which is too large to carry with the rest: use the image's.
"$PY" -c "import pyarrow, sys; v = pyarrow.__version__; print('pyarrow', v); sys.exit(int(v.split('.')[0]) < 24)" \
  || { echo "the image's pyarrow is older than 24: carry a pyarrow wheel in a call of its own first (README)" | tee "$OUT/run.log"; exit 1; }
"$PY" -c "import lm_eval, datasets, evaluate; print('lm_eval', lm_eval.__version__, 'datasets', datasets.__version__)" \
  || { echo "lm-eval does not import with the carried wheels" | tee -a "$OUT/run.log"; exit 1; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" benchmarks/gpu/build_gpu_model.py .gpu_carry/smollm2-135m-shape "$MODEL"
  timeout "$BUDGET_S" "$PY" benchmarks/run.py --suite gpu --out /tmp/bench \
    --model-path "$MODEL" --model-label "smollm2-135m architecture, random init (seed 0)"
  echo "run.py exit code $?"
} 2>&1 | tee "$OUT/run.log"
for f in results.json table.md speedups.png; do [ -f "/tmp/bench/$f" ] && cp "/tmp/bench/$f" "$OUT/"; done
tar czf "$OUT/scenarios.tgz" -C /tmp/bench scenarios 2>/dev/null || true
ls -la "$OUT"
