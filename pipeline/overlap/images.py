"""Images behind the pairs: their grey-level statistics and the *degenerate* flag.

CLIP found that Kinetics-700's near-duplicates were mostly black frames: a near-constant or tiny
image matches anything. So before a pair may count as overlap, both of its images are measured
(mean and standard deviation of the grey levels on a 128-pixel draft, and the size): a pair whose
benchmark or pool image is near-constant (grey std under ``degenerate_std``) or tiny (a side under
``degenerate_min_side`` pixels) is ``degenerate`` instead, and goes to a human. The same statistics
describe the Overlap and Clean splits in the diagnostics (CLIP's second caveat).

Benchmark images are read from ``benchmarks/{name}/samples.parquet`` row group by row group; pool
images from ``pool/shards/{shard}.tar`` by offset, located through the ``pool`` manifest.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from clipcurate.core.imageload import TarIndex
from clipcurate.core.workspace import Workspace


def image_stats(data: bytes | None) -> dict | None:
    """Mean grey level, grey std (0-255) and size of an encoded image; None when unreadable."""
    if not data:
        return None
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        img.draft("L", (128, 128))
        g = np.asarray(img.convert("L"), dtype=np.float32)
    except Exception:
        return None
    return {"mean": float(g.mean()), "std": float(g.std()), "width": int(w), "height": int(h)}


def degenerate_reason(st: dict | None, cfg: dict, side: str) -> str | None:
    if st is None:
        return None
    if min(st["width"], st["height"]) < int(cfg["degenerate_min_side"]):
        return f"{side} image tiny ({st['width']}x{st['height']} < {cfg['degenerate_min_side']} px)"
    if st["std"] < float(cfg["degenerate_std"]):
        return f"{side} image near-constant (grey std {st['std']:.1f} < {cfg['degenerate_std']})"
    return None


def bench_samples(ws: Workspace, name: str, columns: list[str]) -> pa.Table | None:
    """benchmarks/{name}/samples.parquet (the columns that exist), or None."""
    p = ws.root / "benchmarks" / name / "samples.parquet"
    if not p.is_file():
        return None
    pf = pq.ParquetFile(p)
    cols = [c for c in columns if c in pf.schema_arrow.names]
    return pf.read(columns=cols)


def bench_image_stats(ws: Workspace, name: str, wanted: set[int]) -> dict[int, dict]:
    """index → image stats for the wanted benchmark indices (row group by row group)."""
    p = ws.root / "benchmarks" / name / "samples.parquet"
    out: dict[int, dict] = {}
    if not p.is_file() or not wanted:
        return out
    pf = pq.ParquetFile(p)
    if "image" not in pf.schema_arrow.names:
        return out
    for g in range(pf.num_row_groups):
        idx = pf.read_row_group(g, columns=["index"]).column("index").to_pylist()
        hit = [j for j, i in enumerate(idx) if i in wanted]
        if not hit:
            continue
        imgs = pf.read_row_group(g, columns=["image"]).column("image")
        for j in hit:
            st = image_stats(imgs[j].as_py())
            if st is not None:
                out[int(idx[j])] = st
    return out


def pool_image_stats(ws: Workspace, uids: set[str]) -> dict[str, dict]:
    """uid → image stats for pool images: the ``pool`` manifest gives shard and key, the image is
    ``{key}.jpg`` (or .png/.webp) in ``pool/shards/{shard}.tar`` (read by offset)."""
    files = sorted((ws.root / "pool" / "manifest").glob("*.parquet"))
    if not uids or not files:
        return {}
    where: dict[str, list[tuple[str, str]]] = {}
    for f in files:
        try:
            t = pq.read_table(f, columns=["uid", "shard", "key", "status"])
        except Exception:  # unreadable manifest: the pool side is simply not checked
            continue
        for uid, shard, key, status in zip(*(t.column(c).to_pylist() for c in ("uid", "shard", "key", "status"))):
            if uid in uids and status == "success":
                where.setdefault(shard, []).append((uid, key))
    out = {}
    for shard, items in sorted(where.items()):
        path = ws.root / "pool" / "shards" / f"{shard}.tar"
        if not path.is_file():
            continue
        tar = TarIndex(path)
        for uid, key in items:
            data = next((d for d in (tar.read(f"{key}{e}") for e in (".jpg", ".jpeg", ".png", ".webp")) if d), None)
            st = image_stats(data)
            if st is not None:
                out[uid] = st
    return out
