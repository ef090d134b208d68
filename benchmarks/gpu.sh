#!/usr/bin/env bash
# Every GPU figure of the project in one device call (< 8 min on one H100 or H200), one table:
# embed images/s (model only, decode only, end to end, PIL vs nvJPEG decode), exact search pairs/s
# vs the bare matmul, tests/test_search.py::test_cuda_matches_cpu, detector training throughput,
# curate -> train -> eval vs stock open_clip_train, and (CPU cores only) download vs stock
# img2dataset. The parts are in benchmarks/gpu.py.
#
#   bash benchmarks/gpu.sh --fetch     # once, on a machine with network: wheels into the git-ignored .whl/
#   bash benchmarks/gpu.sh             # on the GPU machine, carrying .whl (run tool: carry [".whl"])
#   bash benchmarks/gpu.sh --dry-run   # on a CPU, tiny sizes, < 1 min (tests/test_benchmarks_gpu.py)
#
# The GPU machine has torch, torchvision, numpy, pillow, pyarrow, pandas, opencv, typer and rich but
# no network. --fetch downloads, for its Python (PYV, default 3.12), the pure-Python and small
# wheels it lacks: open_clip_torch (with open_clip_train) and what it needs beyond torch,
# webdataset, duckdb, img2dataset and what it needs (35 MB for CPython 3.12; a run may carry 64 MiB). Nothing is
# compiled or fetched there: missing modules are installed from .whl/ with --no-index. faiss-gpu
# (~90 MB) does not fit; the GPU search runs through torch. Ray's wheels (240 MB) do not fit
# either: the ray part then says it did not run.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch" ]; then
  PYV=${PYV:-3.12}
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "open_clip_torch==3.3.0" ftfy wcwidth regex "webdataset==0.2.86" braceexpand duckdb tomli-w \
    img2dataset==1.47.0 albumentations==1.4.24 albucore==0.0.23 pydantic==2.13.4 pydantic-core==2.46.4 \
    annotated-types==0.7.0 typing-inspection==0.4.2 simsimd==6.5.16 stringzilla==5.3.2 \
    exifread-nocycle==3.0.1 fire==0.7.1 termcolor==3.3.0
  du -sh .whl
  exit 0
fi

PY="${PYTHON:-python3}"
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1  # albumentations would query PyPI on import
if [ "${1:-}" != "--dry-run" ]; then
  need=0
  for mod in open_clip open_clip_train ftfy regex webdataset duckdb img2dataset albumentations; do
    "$PY" -c "import $mod" 2>/dev/null || need=1
  done
  if [ "$need" = 1 ] && [ -d .whl ]; then
    echo "gpu: installing the missing modules from .whl/ (no network)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu-site .whl/*.whl 2>&1 | tail -3 || true
    export PYTHONPATH="/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
fi
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import clipcurate" 2>/dev/null; then
  # Not installed here: the import name as setup.py maps it (pipeline/ -> clipcurate, queries/ and
  # cli/ -> its sub-packages), as a tree of symlinks to this checkout. No build, no network.
  src=$(mktemp -d /tmp/gpu-src.XXXXXX)
  mkdir "$src/clipcurate"
  for entry in pipeline/*; do ln -s "$(pwd)/$entry" "$src/clipcurate/"; done
  ln -s "$(pwd)/queries" "$src/clipcurate/queries"
  ln -s "$(pwd)/cli" "$src/clipcurate/cli"
  export PYTHONPATH="$src:$PYTHONPATH"
fi
exec timeout --signal=KILL "${LIMIT_S:-450}" "$PY" benchmarks/gpu.py "$@"
