"""Write embed-stage files in the agreed layout (docs/design.md) without running a model:
random unit vectors for the pool and the benchmarks, plus planted near-copies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.core.uid import make_uid

TAG = "test-model__random"


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def near_copy(rng: np.random.Generator, v: np.ndarray, cos: float) -> np.ndarray:
    """A unit vector at cosine ``cos`` from unit vector ``v``."""
    r = rng.standard_normal(v.shape).astype(np.float32)
    r -= (r @ v) * v
    r /= np.linalg.norm(r)
    return (cos * v + np.sqrt(1 - cos * cos) * r).astype(np.float32)


def meta_table(tag: str, source: str, name: str, uids: list[str], index=None) -> pa.Table:
    n = len(uids)
    return pa.table({"model_tag": [tag] * n, "source": [source] * n, "name": [name] * n,
                     "row": pa.array(np.arange(n), pa.int64()), "uid": uids,
                     "index": pa.array(index if index is not None else [None] * n, pa.int64())})


def write_model(root: Path, tag: str = TAG, dim: int = 32, kind: str = "clip", pretrained: str = "fixture") -> None:
    """model.json of a stand-in model: its planted vectors behave like a trained CLIP's ("fixture");
    ``pretrained="random"`` marks a random-init CLIP, which the stage never lets decide overlap."""
    d = root / "embed" / tag
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.json").write_text(json.dumps({"model": "test-model", "pretrained": pretrained, "tag": tag,
                                              "dim": dim, "kind": kind}))


def write_pool_shard(root: Path, shard: str, x: np.ndarray, uids: list[str], tag: str = TAG,
                     done: bool = True) -> None:
    d = root / "embed" / tag / "pool"
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / f"{shard}.npy", x.astype(np.float16))
    pq.write_table(meta_table(tag, "pool", shard, uids), d / f"{shard}.parquet")
    if done:
        (d / f"{shard}.done").write_text("{}")


def write_bench(root: Path, name: str, x: np.ndarray, tag: str = TAG, uids: list[str] | None = None,
                index: list[int] | None = None) -> list[str]:
    d = root / "embed" / tag / "bench" / name
    d.mkdir(parents=True, exist_ok=True)
    n = len(x)
    index = list(range(n)) if index is None else index
    uids = uids or [make_uid("bench", name, i, "") for i in index]
    np.save(d / "image.npy", x.astype(np.float16))
    pq.write_table(meta_table(tag, "bench", name, uids, index), d / "image.parquet")
    (d.parent / f"{name}.done").write_text("{}")  # the embed stage's completion marker
    return uids


def pool_uid(shard: str, row: int) -> str:
    return make_uid("pool", shard, row)


def make_workspace(root: Path, *, seed: int = 0, dim: int = 32, shards: int = 3, per_shard: int = 200,
                   benches: dict[str, int] | None = None, plants: list[tuple] | None = None) -> dict:
    """A workspace with random pool shards and benchmarks. ``plants`` = [(bench, bench_row, shard_i,
    pool_row, cos)] overwrites pool vectors with near-copies of benchmark vectors. Returns the arrays."""
    rng = np.random.default_rng(seed)
    benches = benches or {"cifar10": 40, "stl10": 25}
    write_model(root, dim=dim)
    bvec = {name: unit(rng, n, dim) for name, n in benches.items()}
    pvec = [unit(rng, per_shard, dim) for _ in range(shards)]
    for bench, brow, si, prow, cos in plants or []:
        pvec[si][prow] = near_copy(rng, bvec[bench][brow], cos)
    buids = {name: write_bench(root, name, v) for name, v in bvec.items()}
    names = [f"{i:05d}" for i in range(shards)]
    puids = []
    for name, x in zip(names, pvec):
        u = [pool_uid(name, r) for r in range(len(x))]
        write_pool_shard(root, name, x, u)
        puids += u
    return {"bench": bvec, "pool": pvec, "shards": names, "bench_uids": buids, "pool_uids": puids}


def write_bench_samples(root: Path, name: str, images: list, labels: list[int]) -> None:
    """benchmarks/{name}/samples.parquet with PNG bytes (the `benchmarks` manifest columns)."""
    import io

    rows = {"uid": [], "benchmark": [], "index": [], "label": [], "label_name": [], "captions": [], "width": [],
            "height": [], "sha256": [], "image": []}
    for i, (img, lbl) in enumerate(zip(images, labels)):
        buf = io.BytesIO()
        img.save(buf, "PNG")
        rows["uid"].append(make_uid("bench", name, i, ""))
        rows["benchmark"].append(name)
        rows["index"].append(i)
        rows["label"].append(lbl)
        rows["label_name"].append(str(lbl))
        rows["captions"].append([])
        rows["width"].append(img.size[0])
        rows["height"].append(img.size[1])
        rows["sha256"].append("")
        rows["image"].append(buf.getvalue())
    d = root / "benchmarks" / name
    d.mkdir(parents=True, exist_ok=True)
    tbl = pa.table({**{k: v for k, v in rows.items() if k not in ("index", "label", "image", "captions")},
                    "index": pa.array(rows["index"], pa.int64()), "label": pa.array(rows["label"], pa.int32()),
                    "captions": pa.array(rows["captions"], pa.list_(pa.string())),
                    "image": pa.array(rows["image"], pa.binary())})
    pq.write_table(tbl, d / "samples.parquet")
