"""Data for the bench/embed tests: a small pool (through download.write_pool_shard) and benchmark
sources of every kind, all generated with clipcurate.core.synth."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.core.synth import CLASSES, caption_for, jpeg_bytes, make_image, png_bytes

TINY = "clipcurate-tiny"


def truncated_jpeg(seed: int = 0) -> bytes:
    """A JPEG whose header parses but whose body is cut: Image.open works, load() fails."""
    data = jpeg_bytes(make_image(1, seed, size=96))
    return data[: len(data) * 2 // 5]


def make_pool(ws, shards: int = 3, per_shard: int = 12, bad: dict[int, int] | None = None, size: int = 48):
    """``shards`` pool shards of ``per_shard`` good images; ``bad={shard: n}`` adds n truncated JPEGs."""
    import numpy as np

    from clipcurate.download import write_pool_shard

    bad = bad or {}
    for s in range(shards):
        rng = np.random.default_rng(s)
        samples = [{"url": f"http://pool.test/{s}/{i}.jpg", "caption": caption_for(i, rng),
                    "image": make_image(i % 10, 1000 * s + i, size=size)} for i in range(per_shard)]
        for j in range(bad.get(s, 0)):
            samples.insert(1 + j, {"url": f"http://pool.test/{s}/bad{j}.jpg", "caption": "broken",
                                   "image": truncated_jpeg(j)})
        write_pool_shard(ws, f"{s:05d}", samples)


def tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


def folder_tree(root: Path, classes: int = 3, per_class: int = 3, broken: bool = True) -> Path:
    for c in range(classes):
        d = root / CLASSES[c]
        d.mkdir(parents=True)
        for i in range(per_class):
            (d / f"{i}.png").write_bytes(png_bytes(make_image(c, i, "bench", size=40)))
    if broken:
        (root / CLASSES[0] / "zz_broken.jpg").write_bytes(b"not an image at all")
    return root


def hf_parquet(path: Path, n: int = 9, struct: bool = True, string_labels: bool = False) -> Path:
    imgs = [jpeg_bytes(make_image(i % 3, i, "bench", size=40)) for i in range(n)]
    col = [{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(imgs)] if struct else imgs
    labels = [CLASSES[i % 3] for i in range(n)] if string_labels else [i % 3 for i in range(n)]
    t = pa.table({"image": col, "label": labels})
    if not string_labels:
        meta = {"info": {"features": {"image": {"_type": "Image"},
                                      "label": {"_type": "ClassLabel", "names": ["circle", "square", "triangle"]}}}}
        t = t.replace_schema_metadata({b"huggingface": json.dumps(meta).encode()})
    pq.write_table(t, path)
    return path


def captions_parquet(path: Path, n: int = 4) -> Path:
    pq.write_table(pa.table({
        "image": [jpeg_bytes(make_image(i, i, size=40)) for i in range(n)],
        "captions": [[f"a {CLASSES[i]}", f"the {CLASSES[i]} shape", "a picture"][: 1 + i % 3] for i in range(n)],
    }), path)
    return path


def wds_tar(path: Path, n: int = 6, labels: bool = True) -> Path:
    with tarfile.open(path, "w") as tf:
        for i in range(n):
            tar_add(tf, f"s{i:04d}.jpg", jpeg_bytes(make_image(i % 2, i, size=40)))
            if labels:
                tar_add(tf, f"s{i:04d}.cls", str(i % 2).encode())
            else:
                tar_add(tf, f"s{i:04d}.txt", f"a {CLASSES[i % 2]}\nanother caption {i}\n".encode())
    return path


def captions_folder(root: Path, n: int = 3) -> Path:
    root.mkdir(parents=True)
    with open(root / "captions.jsonl", "w") as fh:
        for i in range(n):
            (root / f"{i}.jpg").write_bytes(jpeg_bytes(make_image(i, i, size=40)))
            fh.write(json.dumps({"image": f"{i}.jpg", "captions": [f"cap {i}", f"other {i}"]}) + "\n")
    return root
