#!/usr/bin/env bash
# One prepared GPU check for issue 8 (curate -> train -> eval, ViT-B-32 + AMP), < 5 min on an H200.
# Usage (repo root):  bash benchmarks/train_gpu.sh            # writes $OUT (or /tmp/train_gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
exec timeout 420 python benchmarks/train_gpu.py --out "${OUT:-/tmp/train_gpu}" "$@"
