"""Test data for curate / train / eval: a tiny synthetic pool, decontam list, splits, benchmarks.

Written directly with tarfile + clipcurate.core.manifest following docs/design.md, so these tests do not
depend on the download / overlap stages being run. When a manifest's owner has not registered it
yet, a stand-in with the agreed columns is registered here (the owner's registration wins).
"""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa

from clipcurate import stages
from clipcurate.core import manifest as mf
from clipcurate.core import synth
from clipcurate.core.uid import pair_uid
from clipcurate.core.workspace import Workspace

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
    stages.load()
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


def make_class_bench(ws: Workspace, tmp, name: str = "shapes", per_class: int = 6, n_classes: int = 4,
                     size: int = 32, style: str = "bench") -> dict:
    """An image-folder classification benchmark of synth shapes, added with `bench.add`."""
    from clipcurate import bench

    root = tmp / f"src_{name}"
    for c in range(n_classes):
        d = root / f"{c:02d}_{synth.CLASSES[c]}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            synth.make_image(c, 1000 + i, style, size).save(d / f"{i:03d}.png")
    return bench.add(ws, name, str(root), classes=[synth.CLASSES[c] for c in range(n_classes)])


def make_caption_bench(ws: Workspace, tmp, name: str = "capshapes", n: int = 12, size: int = 32) -> dict:
    """A caption benchmark (captions.jsonl + images), two captions per image."""
    from clipcurate import bench

    root = tmp / f"src_{name}"
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        c = i % len(synth.CLASSES)
        synth.make_image(c, 2000 + i, "photo", size).save(root / f"{i:03d}.png")
        lines.append(json.dumps({"image": f"{i:03d}.png",
                                 "captions": [f"a photo of a {synth.CLASSES[c]}", f"a {synth.CLASSES[c]} number {i}"]}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return bench.add(ws, name, str(root))


def write_splits(ws: Workspace, overlap: dict[str, set[int]], unreviewed: dict[str, set[int]] | None = None) -> None:
    """overlap/splits.parquet for every benchmark in the workspace: the given indices are Overlap
    (and those in ``unreviewed`` unreviewed: their split waits on undecided review pairs)."""
    from clipcurate import bench

    ensure_manifests()
    rows = []
    for meta in bench.list_benchmarks(ws):
        b = bench.load(ws, meta["name"], columns=["uid", "index"])
        for uid, idx in zip(b.samples["uid"].to_pylist(), b.samples["index"].to_pylist()):
            ov = idx in overlap.get(meta["name"], set())
            un = idx in (unreviewed or {}).get(meta["name"], set())
            rows.append({"benchmark": meta["name"], "bench_index": idx, "bench_uid": uid,
                         "split": "unreviewed" if un else "overlap" if ov else "clean", "max_score": 0.99 if ov else 0.5,
                         "nearest_pool_uid": None, "decided_by": "auto", "reason": "test"})
    mf.write("splits", rows, ws.path("overlap", "splits.parquet"))
