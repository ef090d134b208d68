#!/usr/bin/env bash
# The real-photo development set run through the CLI as a user would, with no pretrained weights.
#
#   bash benchmarks/realphoto_workspace.sh DIR [--train]
#
# 1. `benchmarks/realphoto_devset.py --out DIR/devset`: benchmark tiles cut from photographs that
#    ship inside scikit-learn and matplotlib, and a pool with three planted copies of each tile.
# 2. The pool is served over HTTP on 127.0.0.1 (a free port, a server that stops by itself after
#    SERVE_SECONDS and is stopped on exit in any case), listed in DIR/urls.csv (url, caption), and
#    downloaded with `clipcurate download --allow-private` (loopback is refused by default).
# 3. The tiles become a classification benchmark labelled by the photo each tile was cut from
#    (`bench add --from` a folder tree, one folder per class).
# 4. `embed` with a random-init tiny CLIP, `overlap calibrate` and `overlap` with their defaults.
# 5. The unreviewed count and pending pairs from `splits`, and the decontamination list's
#    precision / recall against DIR/devset/truth.parquet.
# 6. With --train: `curate`, a short `train` on the pool as downloaded and `eval` (the §5 table
#    with the unreviewed bounds, in eval/.../report.md).
#
# Nothing is tuned on this set: every stage runs with its defaults apart from the model choice.
set -euo pipefail

DIR=${1:?usage: realphoto_workspace.sh DIR [--train]}
TRAIN=${2:-}
SERVE_SECONDS=${SERVE_SECONDS:-900}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python}
CC=${CLIPCURATE:-clipcurate}
WS=$DIR/ws
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd); WS=$DIR/ws

# 1. The set.
[ -f "$DIR/devset/truth.parquet" ] || "$PY" "$HERE/realphoto_devset.py" --out "$DIR/devset"

# 3 (prepared first). The benchmark tiles in one folder per source photo: the dev set is rebuilt
# from the same seed to learn each tile's origin ("china:x0,y0"), which truth.parquet does not keep.
"$PY" - "$HERE" "$DIR" <<'EOF'
import shutil, sys
from pathlib import Path
from PIL import Image
sys.path.insert(0, sys.argv[1])
import realphoto_devset as d
out = Path(sys.argv[2])
ds = d.build(0)
dst = out / "bench_by_source"
shutil.rmtree(dst, ignore_errors=True)
for i, origin in enumerate(ds.origin):
    src = out / "devset" / "bench" / "tile" / f"{i:04d}.png"
    # A set written with another --seed would get wrong labels: the saved tile must be the rebuilt one.
    if list(Image.open(src).convert("RGB").getdata()) != list(ds.bench[i].convert("RGB").getdata()):
        sys.exit(f"{src} is not tile {i} of the seed-0 dev set: rebuild DIR/devset with the default seed")
    (dst / origin.split(":")[0]).mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst / origin.split(":")[0] / src.name)
EOF

# 2. Serve the pool on loopback only; `timeout` bounds the server's life, the trap ends it early.
# The port is kept in DIR/port: the urls (and so the pool's uids) stay the same on a rerun, which
# then reuses the finished download, embeddings and search.
[ -f "$DIR/port" ] || "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' >"$DIR/port"
PORT=$(cat "$DIR/port")
timeout "$SERVE_SECONDS" "$PY" -m http.server "$PORT" --bind 127.0.0.1 --directory "$DIR/devset/pool" \
    >"$DIR/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/')" 2>/dev/null && break
    sleep 0.2
done

# The url list: one row per pool image; the caption says nothing about which benchmark tile it copies.
"$PY" - "$DIR" "$PORT" <<'EOF'
import sys
from pathlib import Path
out, port = Path(sys.argv[1]), sys.argv[2]
with open(out / "urls.csv", "w") as f:
    f.write("url,caption\n")
    for p in sorted((out / "devset" / "pool").glob("*.jpg")):
        f.write(f"http://127.0.0.1:{port}/{p.name},a photo\n")
EOF

"$CC" -w "$WS" download --input "$DIR/urls.csv" --allow-private --processes 1 --threads 8
[ -d "$WS/benchmarks/realphoto" ] || "$CC" -w "$WS" bench add realphoto --from "$DIR/bench_by_source"
kill "$SERVER" 2>/dev/null || true

# 4. Embeddings from a random-init tiny CLIP (no pretrained weights), calibration, overlap.
"$CC" -w "$WS" embed --model clipcurate-tiny --pretrained random --device cpu --workers 0
"$CC" -w "$WS" overlap calibrate
"$CC" -w "$WS" overlap

# 5. What is unreviewed, and the decontamination list against the truth.
"$CC" -w "$WS" sql "select split, count(*) as samples, sum(pending_pairs) as pending_pairs from splits group by 1 order by 1"
"$PY" - "$WS" "$DIR/devset/truth.parquet" <<'EOF'
import sys
import duckdb
ws, truth = sys.argv[1], sys.argv[2]
# The pool file name is the url's last part; a listed pool sample is right when it copies a tile.
# Two lists: the whole decontamination list (with the default unreviewed_pool = "drop" it holds the
# pool samples of every pending band pair too) and the part the rule decided (reason "rule: ...").
for name, where in (("decontamination list", "true"), ("its rule-decided part", "reason like 'rule:%'")):
    q = f"""
    with pool as (select uid, regexp_extract(url, '[^/]+$') as pool_file
                  from read_parquet('{ws}/pool/manifest/*.parquet') where status = 'success'),
         listed as (select distinct pool_uid as uid from read_parquet('{ws}/overlap/decontam.parquet') where {where}),
         t as (select p.uid, t.bench_index >= 0 as is_copy from pool p join read_parquet('{truth}') t using (pool_file))
    select count(*) filter (where l.uid is not null and is_copy), count(*) filter (where l.uid is not null and not is_copy),
           count(*) filter (where l.uid is null and is_copy), count(*)
    from t left join listed l using (uid)
    """
    tp, fp, fn, n = duckdb.sql(q).fetchall()[0]
    print(f"{name} vs truth: {tp + fp} of {n} pool images listed; precision {tp / max(tp + fp, 1):.3f} "
          f"({tp}/{tp + fp}), recall {tp / max(tp + fn, 1):.3f} ({tp}/{tp + fn})")
EOF

# 6. A short training run on the pool as downloaded, and its §5 table (eval/.../report.md). The
# clean set is written too, but with unreviewed_pool = "drop" it keeps only the pool samples that no
# pending pair touches (on this set: almost none), too few for a batch.
if [ "$TRAIN" = "--train" ]; then
    "$CC" -w "$WS" curate --set clean --set all --shard-size 200
    "$CC" -w "$WS" train --name all --data all --model clipcurate-tiny --epochs 3 --batch-size 32 --workers 1 --device cpu
    "$CC" -w "$WS" eval --run all --device cpu --workers 0
fi
