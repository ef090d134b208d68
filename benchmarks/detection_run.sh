#!/usr/bin/env bash
# The whole copy-detection run on about 260 images, each command with its defaults, timed.
#
#   bash benchmarks/detection_run.sh DIR
#
# 1. `clipcurate demo --size tiny` writes the tiny world and runs every stage once (160 pool
#    images of which 40 are planted copies, 80 benchmark images; not timed): the workspace then has
#    the pool shards, the benchmarks and the CLIP embeddings the detection run starts from.
# 2. The detection run, timed command by command, every option at its default:
#    hashes, detector training (tiny preset), detector descriptors, calibration (200 planted
#    copies, 256 distractors, keypoints and alignment on the candidates), overlap (search, PDQ
#    search, keypoint votes over the pool, verification, decision, splits).
# Prints one table (seconds per command, total) and the machine's load before and after. Run it
# three times (the workspace is reused; every timed step starts over) and quote the medians.
set -euo pipefail

DIR=${1:?usage: detection_run.sh DIR}
CC=${CLIPCURATE:-clipcurate}
mkdir -p "$DIR"
WS=$(cd "$DIR" && pwd)/ws
[ -f "$WS/run/_SUCCESS" ] || "$CC" demo --workspace "$WS" --size tiny >/dev/null 2>&1

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
declare -a NAMES SECS
step() {  # step NAME command...
    local t0 t1 name=$1
    shift
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>"$DIR/$name.log" || { echo "$name failed: see $DIR/$name.log" >&2; exit 1; }
    t1=$(date +%s.%N)
    NAMES+=("$name"); SECS+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
}
cc() { "$CC" -w "$WS" "$@"; }
rm -rf "$WS/hashes"  # computed by the demo: measured from nothing here
step hashes cc detector hashes
step detector-train cc detector train --run timed --force
step detector-embed cc embed --detector "$WS/detector/timed" --force
step calibrate cc overlap calibrate
step overlap cc overlap --force
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

printf '| step | seconds |\n| --- | --- |\n'
total=0
for i in "${!NAMES[@]}"; do
    printf '| %s | %.0f |\n' "${NAMES[$i]}" "${SECS[$i]}"
    total=$(awk -v a="$total" -v b="${SECS[$i]}" 'BEGIN { print a + b }')
done
printf '| **total** | **%.0f** |\n' "$total"
echo "load average before: $LOAD0; after: $LOAD1; $(nproc) cores"
