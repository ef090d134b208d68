#!/usr/bin/env bash
# Fetch the wheels that benchmarks/embed_gpu.sh installs on a GPU machine which has torch but no
# internet (the lent H200: Python 3.12, torch preinstalled): open_clip_torch and what it needs
# beyond torch, and duckdb (benchmarks/overlap.py imports it), into the git-ignored .whl/ (carry it
# with the run: `carry: [".whl"]`, ~25 MB of the 64 MiB a run may carry).
#
#   bash benchmarks/gpu_wheels.sh            # wheels for CPython 3.12, x86-64 Linux
#   PYV=3.11 bash benchmarks/gpu_wheels.sh   # another Python
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${PYV:-3.12}
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "open_clip_torch==3.3.0" ftfy wcwidth "webdataset==0.2.86" braceexpand regex duckdb
ls -1 .whl
