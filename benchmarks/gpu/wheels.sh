#!/usr/bin/env bash
# Download, for the device's Python 3.12 (x86-64, manylinux), the wheels bigembed's GPU kit
# needs that the device image lacks, into .whl/ (git-ignored). Its image already has torch,
# numpy, pandas, pyarrow, scikit-learn, scipy, numba, llvmlite, xarray, toolz,
# multipledispatch, requests, xxhash, psutil, tqdm, pillow, pytest, pytest-timeout, cupy,
# triton and sentence-transformers (/work/.library/device/KINDS.md). faiss-gpu and cuML are
# far too large to carry: the kit runs faiss-cpu and bigembed's own torch kernels on the GPU.
# Fails when the wheels exceed 60 MiB (a device call carries at most 64 MiB in all).
#
#   bash benchmarks/gpu/wheels.sh            # then: bash benchmarks/gpu/run.sh (on the device)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
LIMIT_MIB=${LIMIT_MIB:-60}
# Pinned to the versions the test suite runs against here.
WHEELS=(
  faiss-cpu==1.15.1     # FAISS (CPU indexes; exact search on the GPU is bigembed's torch kernel)
  datashader==0.19.1    # the raster reference and shading
  pyct==0.6.0           # datashader's import-time helper
  param==2.4.2          # datashader's transfer functions
  colorcet==3.2.1       # palettes
  isal==1.9.1           # fast PNG deflate of frames
  umap-learn==0.5.12    # the CPU UMAP the torch layout is compared with
  pynndescent==0.7.0    # umap-learn imports it
)
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
# One version of each: a stale second copy would stop the install on the device.
for w in "${WHEELS[@]}"; do
  name=${w%%==*}; ver=${w##*==}; norm=$(echo "$name" | tr '-' '_')
  for f in .whl/*.whl; do
    base=$(basename "$f"); fname=${base%%-*}
    if [ "$(echo "$fname" | tr 'A-Z-' 'a-z_')" = "$(echo "$norm" | tr 'A-Z' 'a-z')" ] &&
       [[ "$base" != *"-$ver-"* ]]; then
      echo "removing stale $base"; rm -f "$f"
    fi
  done
done
bytes=$(du -cb .whl/*.whl | tail -1 | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
ls -1 .whl
echo "wheels: ${mib} MiB in .whl/ (limit ${LIMIT_MIB} MiB)"
if [ "$mib" -gt "$LIMIT_MIB" ]; then
  echo "error: the wheels take ${mib} MiB, over the ${LIMIT_MIB} MiB limit" >&2
  exit 1
fi
