"""A review workspace built from the stage contracts (docs/design.md), with synthetic images.

Writes, for ``n_pairs`` queued pairs:
- ``pool/manifest/{shard}.parquet`` + ``pool/shards/{shard}.tar`` ({key}.jpg/.txt/.json),
- ``benchmarks/{name}/samples.parquet`` (with the ``image`` bytes column),
- ``overlap/review_queue.parquet`` (highest score first).

Used by tests/test_review*.py and benchmarks/review.py. ``variants`` caps how many distinct images
are encoded (they are reused cyclically) so that 100,000 pairs build in seconds; ``shuffle`` pairs
queue positions with pool samples in random order (random access into the tars, as a queue sorted
by score gives).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.core import synth
from clipcurate.review import pair_id
from clipcurate.core.uid import make_uid, pair_uid
from clipcurate.core.workspace import Workspace

BENCHMARKS = ("cifar10", "stl10")


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def build(root: Path, n_pairs: int = 12, *, benchmarks=BENCHMARKS, per_shard: int = 10_000,
          variants: int | None = None, image_size: int = 48, bench_size: int | None = None,
          texts: bool = True, shuffle: bool = False) -> Workspace:
    ws = Workspace(root).create()
    variants = variants or n_pairs
    rng = np.random.default_rng(0)
    # pool images: label i % 10, "photo" style; benchmark images: the same label in "bench" style
    pool_jpg = [synth.jpeg_bytes(synth.make_image(i % 10, i, "photo", image_size)) for i in range(min(variants, n_pairs))]
    bench_png = [synth.png_bytes(synth.make_image(i % 10, i, "bench", image_size)) for i in range(min(variants, n_pairs))]
    bench_size = bench_size or max(1, (n_pairs + len(benchmarks) - 1) // len(benchmarks))

    # -- pool: shards of per_shard samples ------------------------------------------------------
    pool_uids, rows = [], []
    n_shards = (n_pairs + per_shard - 1) // per_shard
    (ws.root / "pool" / "shards").mkdir(parents=True, exist_ok=True)
    (ws.root / "pool" / "manifest").mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        shard = f"{s:05d}"
        shard_rows = []
        with tarfile.open(ws.root / "pool" / "shards" / f"{shard}.tar", "w") as tf:
            for i in range(s * per_shard, min(n_pairs, (s + 1) * per_shard)):
                url = f"https://img.example/{i}.jpg"
                caption = synth.caption_for(i % 10, np.random.default_rng(i))
                uid = pair_uid(url, caption)
                key = f"{i:09d}"
                data = pool_jpg[i % len(pool_jpg)]
                _add(tf, f"{key}.jpg", data)
                if texts:
                    _add(tf, f"{key}.txt", caption.encode())
                    _add(tf, f"{key}.json", json.dumps({"uid": uid, "url": url}).encode())
                pool_uids.append(uid)
                shard_rows.append({"uid": uid, "url": url, "caption": caption, "shard": shard, "key": key,
                                   "status": "success", "error": None, "width": image_size,
                                   "height": image_size, "sha256": None, "query_ids": [i % 7]})
        schema = pa.schema([("uid", pa.string()), ("url", pa.string()), ("caption", pa.string()),
                            ("shard", pa.string()), ("key", pa.string()), ("status", pa.string()),
                            ("error", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
                            ("sha256", pa.string()), ("query_ids", pa.list_(pa.int32()))])
        pq.write_table(pa.Table.from_pylist(shard_rows, schema=schema), ws.root / "pool" / "manifest" / f"{shard}.parquet")

    # -- benchmarks --------------------------------------------------------------------------------
    bench_uid = {}
    for b in benchmarks:
        rows = []
        for idx in range(bench_size):
            uid = make_uid("bench", b, idx, "x")
            bench_uid[(b, idx)] = uid
            rows.append({"uid": uid, "benchmark": b, "index": idx, "label": idx % 10,
                         "label_name": synth.CLASSES[idx % 10], "captions": [f"a {synth.CLASSES[idx % 10]}"],
                         "width": image_size, "height": image_size, "sha256": None,
                         "image": bench_png[idx % len(bench_png)]})
        schema = pa.schema([("uid", pa.string()), ("benchmark", pa.string()), ("index", pa.int64()),
                            ("label", pa.int32()), ("label_name", pa.string()), ("captions", pa.list_(pa.string())),
                            ("width", pa.int32()), ("height", pa.int32()), ("sha256", pa.string()),
                            ("image", pa.binary())])
        (ws.root / "benchmarks" / b).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), ws.root / "benchmarks" / b / "samples.parquet",
                       row_group_size=1000)

    # -- the review queue: pair i = pool sample i ↔ benchmark (i % B) index (i // B) % bench_size --
    scores = np.sort(rng.uniform(0.80, 0.95, n_pairs).astype(np.float32))[::-1]
    q = {"position": [], "pair_id": [], "pool_uid": [], "benchmark": [], "bench_index": [], "bench_uid": [],
         "score_clip": [], "score_detector": [], "phash_dist": [], "dhash_dist": [], "kp_inliers": [],
         "text_sim": [], "rank": []}
    pool_of = np.random.default_rng(1).permutation(n_pairs) if shuffle else np.arange(n_pairs)
    for i in range(n_pairs):
        b = benchmarks[i % len(benchmarks)]
        idx = (i // len(benchmarks)) % bench_size
        uid = pool_uids[int(pool_of[i])]
        q["position"].append(i)
        q["pair_id"].append(pair_id(uid, b, idx))
        q["pool_uid"].append(uid)
        q["benchmark"].append(b)
        q["bench_index"].append(idx)
        q["bench_uid"].append(bench_uid[(b, idx)])
        q["score_clip"].append(float(scores[i]))
        q["score_detector"].append(None if i % 3 == 2 else float(0.5 + (i * 37 % 50) / 100))
        q["phash_dist"].append(int(i * 7 % 20))
        q["dhash_dist"].append(int(i * 5 % 20))
        q["kp_inliers"].append(None if i % 4 == 3 else int(i * 11 % 60))
        q["text_sim"].append(None)
        q["rank"].append(1 + i % 3)
    schema = pa.schema([("position", pa.int64()), ("pair_id", pa.string()), ("pool_uid", pa.string()),
                        ("benchmark", pa.string()), ("bench_index", pa.int64()), ("bench_uid", pa.string()),
                        ("score_clip", pa.float32()), ("score_detector", pa.float32()), ("phash_dist", pa.int32()),
                        ("dhash_dist", pa.int32()), ("kp_inliers", pa.int32()), ("text_sim", pa.float32()),
                        ("rank", pa.int32())])
    (ws.root / "overlap").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(q, schema=schema), ws.root / "overlap" / "review_queue.parquet")
    return ws
