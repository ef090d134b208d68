"""Test data for curate / train / eval: a tiny synthetic pool, decontam list, splits, benchmarks.

Written directly with tarfile + pipeline.manifest following docs/design.md, so these tests do not
depend on the download / overlap stages being run. When a manifest's owner has not registered it
yet, a stand-in with the agreed columns is registered here (the owner's registration wins).
"""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa

from pipeline import manifest as mf
from pipeline import synth
from pipeline.uid import pair_uid
from pipeline.workspace import Workspace

_STANDINS = {
    "pool": ("pool/manifest/*.parquet", "download", [
        ("uid", pa.string()), ("url", pa.string()), ("caption", pa.string()), ("shard", pa.string()),
        ("key", pa.string()), ("status", pa.string()), ("error", pa.string()), ("width", pa.int32()),
        ("height", pa.int32()), ("sha256", pa.string()), ("query_ids", pa.list_(pa.int32()))]),
    "decontam": ("overlap/decontam.parquet", "overlap", [
        ("pool_uid", pa.string()), ("benchmark", pa.string()), ("bench_index", pa.int64()),
        ("reason", pa.string())]),
    "splits": ("overlap/splits.parquet", "overlap", [
        ("benchmark", pa.string()), ("bench_index", pa.int64()), ("bench_uid", pa.string()),
        ("split", pa.string()), ("max_score", pa.float32()), ("nearest_pool_uid", pa.string()),
        ("decided_by", pa.string()), ("reason", pa.string())]),
}


def ensure_manifests() -> None:
    mf.load_all_stages()
    for name, (glob, stage, cols) in _STANDINS.items():
        if name not in mf.REGISTRY:
            mf.register(name, version=1, glob=glob, stage=stage, doc=f"(test stand-in for {name})",
                        columns=[(c, t, c) for c, t in cols])


def _add(tf, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def make_pool(ws: Workspace, n: int = 40, shards: int = 2, fail_every: int = 7, size: int = 32,
              seed: int = 0, fmt: str = "jpg") -> list[dict]:
    """Write pool/shards/{00000..}.tar + pool/manifest/*.parquet; returns the manifest rows.

    Every ``fail_every``-th row is a failed download (in the manifest, not in the tar)."""
    ensure_manifests()
    rng = np.random.default_rng(seed)
    rows = []
    per = -(-n // shards)
    for s in range(shards):
        shard = f"{s:05d}"
        shard_rows = []
        path = ws.path("pool", "shards", f"{shard}.tar")
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w") as tf:
            for j in range(per):
                i = s * per + j
                if i >= n:
                    break
                label = int(rng.integers(len(synth.CLASSES)))
                caption = synth.caption_for(label, rng)
                url = f"http://example.com/{i}.{fmt}"
                uid = pair_uid(url, caption)
                key = f"{s:05d}{j:04d}"
                ok = not (fail_every and i % fail_every == fail_every - 1)
                row = {"uid": uid, "url": url, "caption": caption, "shard": shard, "key": key,
                       "status": "success" if ok else "failed", "error": None if ok else "HTTP 404",
                       "width": size if ok else None, "height": size if ok else None, "sha256": None,
                       "query_ids": [label], "label": label}
                if ok:
                    img = synth.make_image(label, i, "photo", size)
                    data = synth.jpeg_bytes(img) if fmt == "jpg" else synth.png_bytes(img)
                    _add(tf, f"{key}.{fmt}", data)
                    _add(tf, f"{key}.txt", caption.encode())
                    _add(tf, f"{key}.json", json.dumps({"uid": uid, "url": url}).encode())
                shard_rows.append(row)
        mf.write("pool", [{k: v for k, v in r.items() if k != "label"} for r in shard_rows],
                 ws.path("pool", "manifest", f"{shard}.parquet"))
        rows += shard_rows
    return rows


def write_decontam(ws: Workspace, uids: list[str], benchmark: str = "shapes") -> None:
    ensure_manifests()
    mf.write("decontam", [{"pool_uid": u, "benchmark": benchmark, "bench_index": i, "reason": "test"}
                          for i, u in enumerate(uids)], ws.path("overlap", "decontam.parquet"))
