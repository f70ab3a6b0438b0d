#!/usr/bin/env bash
# The GPU check, in ONE device call (about 8 minutes of work inside the 10-minute call limit):
#   device run, carry [".whl", ".gpu_carry"], command: bash benchmarks/gpu/run_gpu_suite.sh
# 1. installs the carried wheels into /tmp/site (and a sitecustomize that registers hf_ext/vllm_ext,
#    since the package is not pip-installed there),
# 2. runs the `gpu` pytest marker (tests/gpu, vLLM ones only when vLLM imports) under TESTS_BUDGET_S,
# 3. builds SmolLM2-135M's shape from carried files and runs `benchmarks/run.py --suite gpu` with what
#    is left of BUDGET_S,
# and leaves under $OUT: gpu_check.json + gpu_check.md (both steps' outcome), pytest.xml, results.json,
# table.md, speedups.png, run.log (everything printed), scenarios.tgz.
# Dry check anywhere (no GPU: every gpu test and scenario skips with its reason):
#   OUT=/tmp/g BENCH_SKIP_INSTALL=1 PY=.venv/bin/python BENCH_MODELS_DIR=/tmp/m bash benchmarks/gpu/run_gpu_suite.sh
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/out/gpu}"; mkdir -p "$OUT"
LOG="$OUT/run.log"; : > "$LOG"
BUDGET_S="${BENCH_BUDGET_S:-480}"          # tests + benchmarks; install and model build come on top (~1 min)
TESTS_BUDGET_S="${TESTS_BUDGET_S:-180}"
MODEL="${BENCH_MODELS_DIR:-$ROOT/.models}/smollm2-135m-shape"
PY="${PY:-python3}"   # the image's python3 holds torch; PY and BENCH_SKIP_INSTALL=1 allow a dry check elsewhere
SITE=/tmp/site
START=$(date +%s)
log() { echo "$*" | tee -a "$LOG"; }
if [ "${BENCH_SKIP_INSTALL:-0}" != 1 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    >>"$LOG" 2>&1 || { log "wheel install failed"; exit 1; }
  # PYTHONPATH folders do not run .pth files: register the models the way the .pth hook would
  echo "import lm_eval_ext._hook" > "$SITE/sitecustomize.py"
fi
export PYTHONPATH="$SITE:$ROOT" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# datasets 5.2 needs pyarrow >= 24, which is too large to carry with the rest: use the image's.
"$PY" -c "import pyarrow, sys; v = pyarrow.__version__; print('pyarrow', v); sys.exit(int(v.split('.')[0]) < 24)" >>"$LOG" 2>&1 \
  || { log "the image's pyarrow is older than 24: carry a pyarrow wheel in a call of its own first (README)"; exit 1; }
"$PY" -c "import lm_eval, datasets, evaluate; print('lm_eval', lm_eval.__version__, 'datasets', datasets.__version__)" \
  >>"$LOG" 2>&1 || { log "lm-eval does not import with the carried wheels"; exit 1; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"; } 2>&1 | tee -a "$LOG"

log "== gpu tests (pytest -m gpu, at most ${TESTS_BUDGET_S} s)"
timeout "$TESTS_BUDGET_S" "$PY" -m pytest -m gpu tests/gpu -q -rA -p no:cacheprovider \
  --junitxml="$OUT/pytest.xml" 2>&1 | tee -a "$LOG"
TESTS_RC=${PIPESTATUS[0]}
log "pytest exit code $TESTS_RC"

LEFT=$(( BUDGET_S - ($(date +%s) - START) ))
[ "$LEFT" -lt 60 ] && LEFT=60
log "== gpu benchmark suite (at most ${LEFT} s)"
rm -rf /tmp/bench
{
  "$PY" benchmarks/gpu/build_gpu_model.py .gpu_carry/smollm2-135m-shape "$MODEL" \
    && timeout "$LEFT" "$PY" benchmarks/run.py --suite gpu --out /tmp/bench \
         --model-path "$MODEL" --model-label "smollm2-135m architecture, random init (seed 0)"
} 2>&1 | tee -a "$LOG"
BENCH_RC=${PIPESTATUS[0]}
log "run.py exit code $BENCH_RC"
for f in results.json table.md speedups.png; do [ -f "/tmp/bench/$f" ] && cp "/tmp/bench/$f" "$OUT/"; done
tar czf "$OUT/scenarios.tgz" -C /tmp/bench scenarios 2>/dev/null || true
"$PY" benchmarks/gpu/summarize.py "$OUT" "$TESTS_RC" "$BENCH_RC" "$(( $(date +%s) - START ))" 2>&1 | tee -a "$LOG"
ls -la "$OUT"
