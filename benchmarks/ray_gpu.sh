#!/usr/bin/env bash
# Ray on one GPU machine (see benchmarks/ray_gpu.py). Installs only local wheels (.whl/); exits 0
# with a message when ray itself is not importable there (its wheel is too large to carry).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
nvidia-smi -L 2>/dev/null || true
if ! "$PY" -c "import ray" 2>/dev/null; then
  echo "ray_gpu: ray is not installed on this machine; nothing to check"
  "$PY" -m pip list 2>/dev/null | grep -i -E "^(ray|torch|open.clip|faiss|pyarrow|duckdb|typer|rich) " || true
  exit 0
fi
for mod in open_clip ftfy webdataset; do
  "$PY" -c "import $mod" 2>/dev/null || "$PY" -m pip install -q --no-index --find-links .whl open_clip_torch ftfy webdataset braceexpand 2>&1 | tail -2
done
exec timeout --signal=KILL "${LIMIT_S:-300}" "$PY" benchmarks/ray_gpu.py
