#!/usr/bin/env bash
# GPU throughput of `clipcurate embed` (ViT-B-32, random init, bf16, generated JPEG shards) and of
# exact matmul+top-k search. One prepared run, < 4 min on an H200; installs nothing slow.
#
#   PYTHONPATH=. bash benchmarks/embed_gpu.sh                                  # the H200 run
#   DEVICE=cpu N=64 MODEL=clipcurate-tiny SEARCH_POOL=2000 SEARCH_QUERIES=100 bash benchmarks/embed_gpu.sh  # dry run
#
# Knobs (environment): DEVICE MODEL PRECISION N SIZE SHARD BATCH WORKERS SEARCH_POOL SEARCH_QUERIES
# DIM K SKIP_SEARCH, and LIMIT_S (the hard time limit of the python step, default 220 s).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)"
PY="${PYTHON:-python3}"

# Only local wheels (.whl/ beside the repo root, if any), never the network.
need=()
for mod in numpy PIL torch torchvision open_clip ftfy regex pyarrow rich; do
  "$PY" -c "import $mod" 2>/dev/null || need+=("$mod")
done
if ((${#need[@]})); then
  if [ -d .whl ]; then
    echo "embed_gpu: installing from .whl/ for missing modules: ${need[*]}"
    "$PY" -m pip install -q --no-index --find-links .whl open_clip_torch ftfy regex pyarrow rich webdataset 2>&1 | tail -3 || true
  fi
  for mod in "${need[@]}"; do
    "$PY" -c "import $mod" 2>/dev/null || { echo "embed_gpu: python module '$mod' missing (put its wheel in .whl/)"; exit 2; }
  done
fi

"$PY" - <<'PY'
import torch
print(f"embed_gpu: torch {torch.__version__}, cuda available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""), flush=True)
PY
exec timeout --signal=KILL "${LIMIT_S:-220}" "$PY" benchmarks/embed_gpu.py
