#!/usr/bin/env bash
# `benchmarks/download.py` at 0 ms latency on a machine with many cores: the run this project's
# 2-core box cannot make (issue 4; docs/benchmarks.md § download). On 2 cores the loopback server,
# the baseline client and the download share the CPU, and the default resize alone caps the ratio
# at ~0.56x. With more cores than the one-process server and the one-process baseline client can
# use, the server becomes the bound for both sides, and the question is whether `clipcurate
# download` then drains it as fast as plain GETs do.
#
#   bash benchmarks/download_device.sh --fetch   # here: the wheels the lent machine lacks, into .whl/
#   bash benchmarks/download_device.sh           # there, with `carry: [".whl"]`: < 5 min, prints a table
#   N=2000 CONFIGS="2:border" bash benchmarks/download_device.sh   # a dry run anywhere
#
# The lent 16-core H200 machine (Python 3.12) has pillow, opencv-python-headless, pandas, pyarrow,
# numpy, typer, rich (/work/.library/device/KINDS.md) but not img2dataset and what it needs beyond
# those (~32 MB of wheels with duckdb). Knobs: N (images, default 20000), SHARD (samples per
# shard, 1000), CONFIGS (space-separated PROCESSES:MODE, MODE = border | no; default
# "2:border 8:border 14:border 14:no"), LIMIT_S (per benchmark run, default 150).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch" ]; then
  PYV=${PYV:-3.12}
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl img2dataset==1.47.0 albumentations==1.4.24 albucore==0.0.23 pydantic==2.13.4 \
    pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 simsimd==6.5.16 \
    stringzilla==5.3.2 exifread-nocycle==3.0.1 fire==0.7.1 termcolor==3.3.0 webdataset==0.2.86 \
    braceexpand==0.1.7 duckdb==2.0.1 tomli-w==1.2.0
  du -sh .whl
  exit 0
fi

PY="${PYTHON:-python3}"
export NO_ALBUMENTATIONS_UPDATE=1  # no network check on import
if ! "$PY" -c "import img2dataset, albumentations, duckdb" 2>/dev/null; then
  [ -d .whl ] || { echo "download_device: img2dataset missing and no .whl/ (run with --fetch first)"; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import img2dataset, albumentations, duckdb, clipcurate.cli.app" || { echo "download_device: imports failed"; exit 2; }

N=${N:-20000}
SHARD=${SHARD:-1000}
CONFIGS=${CONFIGS:-"2:border 8:border 14:border 14:no"}
LIMIT_S=${LIMIT_S:-150}
echo "cores: $(nproc)  python: $("$PY" -c 'import sys; print(sys.version.split()[0])')  N=$N  shard=$SHARD  latency 0 ms"
summary=()
for cfg in $CONFIGS; do
  procs=${cfg%%:*}
  mode=${cfg##*:}
  extra=(--resize-mode border)
  [ "$mode" = "no" ] && extra=(--resize-mode no --skip-reencode)
  echo "== --processes $procs ${extra[*]}"
  out=$(timeout "$LIMIT_S" "$PY" benchmarks/download.py --n "$N" --samples-per-shard "$SHARD" \
        --processes "$procs" "${extra[@]}" 2>&1) || { echo "$out" | tail -5; summary+=("$cfg: failed"); continue; }
  echo "$out" | grep -E 'baseline|end to end|steady|CPU per image|load average'
  base=$(echo "$out" | sed -n 's/.*(baseline): *\([0-9.]*\) images.*/\1/p')
  e2e=$(echo "$out" | sed -n 's/.*end to end: *\([0-9.]*\) images.*ratio \([0-9.]*\)x.*/\1 \2/p')
  summary+=("$cfg: baseline ${base} img/s, download ${e2e% *} img/s end to end, ratio ${e2e#* }x")
done
echo
echo "processes:mode  ->  baseline / download end to end / ratio"
printf '%s\n' "${summary[@]}"
