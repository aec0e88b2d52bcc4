#!/usr/bin/env bash
# bigembed's GPU kit: everything a session lent a GPU runs, in one command, in under 8 minutes.
#
#   bash benchmarks/gpu/wheels.sh                  # here, once: .whl/ (the wheels the image lacks)
#   run (device tool): carry [".whl"], timeout_s 560,
#       command: bash benchmarks/gpu/run.sh        # results under $OUT
#   bash benchmarks/gpu/run.sh --cpu-dry-run       # here: the same steps at tiny sizes
#
# Installs the carried wheels (--no-index --no-deps) into /tmp/site, lays the package out as
# it installs (kernels/ and server/ inside bigembed/) in a /tmp/bigembed-kit.* folder, runs `pytest -m gpu`,
# then the GPU benchmarks (frames at 10M and 100M points, kNN graph + lookups over 1M x 384,
# UMAP over 1M x 384 with quality against the CPU path on a sample, ViT-B/16 extraction in
# bf16). Every step has its own time cap, and a failing or slow step is recorded and skipped.
# Results: $OUT/{summary,frames,knn,umap,vit,compare}.json, $OUT/pytest.log, $OUT/run.log; commit
# them under benchmarks/results/gpu/.
set -uo pipefail
cd "$(dirname "$0")/../.."
DRY=0
[ "${1:-}" = "--cpu-dry-run" ] && DRY=1
if [ $DRY = 1 ]; then
  PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
  OUT=${OUT:-$(mktemp -d /tmp/bigembed-gpu-dry.XXXXXX)}
  DEVICE=cpu; STEP_ARGS="--dry-run"; PYTEST_CAP=${PYTEST_CAP:-120}
  # tiny work on a possibly busy machine: one thread each, no spinning thread pools
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
else
  PY=${PYTHON:-python3}
  OUT=${OUT:?OUT must name the results folder}
  DEVICE=cuda; STEP_ARGS=""; PYTEST_CAP=${PYTEST_CAP:-90}
fi
mkdir -p "$OUT"
LOG="$OUT/run.log"
: > "$LOG"
say() { echo "[gpu-kit $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
T0=$(date +%s)
export PYTHONUNBUFFERED=1 BIGEMBED_NO_PROGRESS=1
# on the device a fresh cache (a bare machine); a dry run keeps this machine's warm one
[ $DRY = 0 ] && export BIGEMBED_CACHE=${BIGEMBED_CACHE:-/tmp/bigembed-kit-cache}

# 1. the wheels the device image lacks (a dry run uses this machine's environment instead)
SITE=""
if [ $DRY = 0 ]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 && SITE=/tmp/site \
      || say "wheel install FAILED (see above); going on with what the image has"
  else
    say "no .whl/ carried: run benchmarks/gpu/wheels.sh here and carry .whl"
  fi
fi
# 2. the package as it installs (kernels/ and server/ inside bigembed/), with the tests and
#    benchmarks beside it; everything below runs there, so no source folder shadows it
KIT=$(mktemp -d /tmp/bigembed-kit.XXXXXX)
trap 'rm -rf "$KIT"' EXIT
cp -r bigembed benchmarks tests pyproject.toml "$KIT/" && cp -r kernels "$KIT/bigembed/kernels" \
  && cp -r server "$KIT/bigembed/server"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT"; LOG="$OUT/run.log";; esac
case "$PY" in /*|python*) ;; *) PY="$PWD/$PY";; esac
cd "$KIT"
export PYTHONPATH="$KIT${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
say "python $($PY -c 'import sys; print(sys.version.split()[0])'), device $DEVICE, out $OUT"
$PY -c "import bigembed.kernels.raster as r; print('bigembed from', r.__file__)" 2>&1 | tee -a "$LOG"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" 2>&1 | tee -a "$LOG"

# 3. the GPU tests (each gpu-marked test; skipped without CUDA)
say "pytest -m gpu (cap ${PYTEST_CAP}s)"
timeout -k 5 "$PYTEST_CAP" "$PY" -m pytest -q -m gpu -p no:cacheprovider \
  tests/test_frames.py tests/test_knn_kernel.py tests/test_bench.py tests/test_reduce.py \
  tests/test_umap_torch.py >"$OUT/pytest.log" 2>&1
rc=$?
say "pytest -m gpu: exit $rc ($(tail -1 "$OUT/pytest.log"))"

# 4. the benchmarks, each step capped (benchmarks/gpu/steps.py)
"$PY" -m benchmarks.gpu.steps --out "$OUT" --device "$DEVICE" $STEP_ARGS 2>&1 | tee -a "$LOG"
say "done in $(( $(date +%s) - T0 ))s; results in $OUT"
ls -1 "$OUT" | tee -a "$LOG"
