"""Perceptual hashes: computed once per image, cached in the workspace, compared by Hamming distance.

pHash: shrink to 32×32 grey, 2-D DCT, keep the 8×8 lowest frequencies, one bit per coefficient
(above / below their median). dHash: shrink to 9×8 grey, one bit per horizontal neighbour pair
(brighter or not). Each is 64 bits (imagehash); two images are compared by the Hamming distance of
their hashes (0 = same, ~32 = unrelated). PDQ (Meta's photo hash, 256 bits,
:mod:`clipcurate.overlap.verify`) is stored for four variants of each image — as it is, mirrored,
border-trimmed, trimmed and mirrored — so ``pdq_dist`` survives mirrors, borders and letterboxes. They are computed **once per image** by a sharded stage
(``clipcurate detector hashes``, :class:`HashStage`) and cached in the workspace
(``hashes/pool/{shard}.parquet``, ``hashes/bench/{name}.parquet``, manifest ``hashes``), then any
pair costs one XOR and a popcount (:func:`pair_hash_distances`).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from clipcurate.core import manifest as mf
from clipcurate.core.console import warn
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.stage import Stage, marker
from clipcurate.core.workspace import Workspace
from clipcurate.overlap.verify import pack, pdq_variants

HASH_FOLDER = "hashes"

mf.register(
    "hashes", version=2, glob="hashes/*/*.parquet", stage="detector",
    doc="Perceptual hashes (imagehash pHash and dHash, 64 bits each; PDQ, 256 bits, of four variants), "
        "computed once per pool and benchmark image; Hamming distances between them are the "
        "`phash_dist`/`dhash_dist`/`pdq_dist` signals.",
    columns=[
        ("source", pa.string(), "`pool` or `bench`"),
        ("name", pa.string(), "pool shard or benchmark name"),
        ("uid", pa.string(), "sample uid (pool uid or benchmark uid)"),
        ("index", pa.int64(), "benchmark index (null for pool)"),
        ("phash", pa.int64(), "pHash, 64 bits as a signed integer (null when the image could not be read)"),
        ("dhash", pa.int64(), "dHash, 64 bits as a signed integer (null when the image could not be read)"),
        ("pdq", pa.binary(), "PDQ of the image, mirrored, border-trimmed, trimmed and mirrored: 4 × 32 bytes "
                             "(null when the image could not be read)"),
    ])
HASH_VERSION = 2  # a marker of another version is forgotten: its shard is hashed again


def _bits_to_int64(bits: np.ndarray) -> int:
    """8×8 booleans → one signed 64-bit integer (row-major, first bit most significant)."""
    return int(np.packbits(bits.astype(np.uint8).ravel()).view(">u8")[0].astype(np.int64))


def image_hashes(img: Image.Image) -> tuple[int, int]:
    """(pHash, dHash) of an image as signed 64-bit integers."""
    import imagehash  # imagehash: 0.2 s to import; only `detector hashes` and overlap pay it

    img = img.convert("RGB")
    return _bits_to_int64(imagehash.phash(img).hash), _bits_to_int64(imagehash.dhash(img).hash)


def hamming(a, b) -> np.ndarray:
    """Elementwise Hamming distance between arrays of 64-bit hashes (int32)."""
    x = np.bitwise_xor(np.asarray(a, np.int64).view(np.uint64), np.asarray(b, np.int64).view(np.uint64))
    return np.bitwise_count(x).astype(np.int32)


def hamming_matrix(a, b) -> np.ndarray:
    """All-pairs Hamming distances, [len(a), len(b)] int32."""
    a = np.asarray(a, np.int64).view(np.uint64)[:, None]
    b = np.asarray(b, np.int64).view(np.uint64)[None, :]
    return np.bitwise_count(a ^ b).astype(np.int32)


def open_image(data: bytes) -> Image.Image:
    """Decode image bytes to RGB (JPEG decoded at a reduced scale when it is larger than 256 px)."""
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (256, 256))
    return img.convert("RGB")


def iter_pool_tar(path: Path) -> Iterator[tuple[str, str, bytes | None]]:
    """(key, uid, image bytes) per sample of a webdataset tar; samples are grouped by key (the
    member name up to the first dot of its base name). A sample without a uid is skipped."""
    group: dict[str, dict] = {}
    order: list[str] = []
    with tarfile.open(path, "r") as tf:
        for m in tf:
            if not m.isfile():
                continue
            base = os.path.basename(m.name)
            key, _, ext = base.partition(".")
            key = os.path.join(os.path.dirname(m.name), key)
            if key not in group:
                group[key] = {}
                order.append(key)
            group[key][ext.lower()] = tf.extractfile(m).read()
    for key in order:
        g = group[key]
        try:
            uid = json.loads(g["json"])["uid"]
        except (KeyError, ValueError, TypeError):
            continue
        img = next((g[e] for e in ("jpg", "jpeg", "png", "webp") if e in g), None)
        yield key, uid, img


def _signature(path: Path) -> dict:
    st = path.stat()
    return {"source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}


def _hash_rows(items: Iterable[tuple[str, int | None, bytes | None]], source: str, name: str) -> tuple[dict, int]:
    rows = {"source": [], "name": [], "uid": [], "index": [], "phash": [], "dhash": [], "pdq": []}
    bad = 0
    for uid, index, data in items:
        ph = dh = pd = None
        if data is not None:
            try:
                img = open_image(data)
                ph, dh = image_hashes(img)
                pd = pack(pdq_variants(img)).tobytes()
            except Exception:  # unreadable image: a null hash, counted
                bad += 1
        else:
            bad += 1
        for k, v in (("source", source), ("name", name), ("uid", uid), ("index", index), ("phash", ph),
                     ("dhash", dh), ("pdq", pd)):
            rows[k].append(v)
    return rows, bad


def _bench_files(ws: Workspace) -> dict[str, Path]:
    return {p.parent.name: p for p in sorted(ws.path("benchmarks").glob("*/samples.parquet"))}


def read_bench(path: Path, columns: list[str]) -> pa.Table:
    """Columns of a benchmark's samples.parquet (through the ``benchmarks`` manifest when registered)."""
    try:
        return mf.read("benchmarks", path, columns=columns)
    except ClipcurateError as exc:
        if "unknown manifest" not in str(exc):
            raise
        return pq.read_table(path, columns=columns)


class HashStage(Stage):
    """The hashes as a sharded stage: one shard per pool tar (``pool/{shard}``) and per benchmark
    (``bench/{name}``), each written to ``hashes/{source}/{name}.parquet`` (manifest ``hashes``).

    The runner writes the ``.done`` marker after the Parquet file; the marker keeps what
    :meth:`run_shard` returns, which includes the size and mtime of the source, so that
    :meth:`forget_changed` can tell a source that changed since (a shard downloaded again, a
    benchmark re-added) and have it hashed again."""

    name = "hashes"
    description = "hashes"

    def __init__(self, folder: Path, sources: dict[str, Path], force: bool = False):
        super().__init__(folder, force=force)
        self.sources = sources

    def shards(self) -> list[str]:
        return list(self.sources)

    def forget_changed(self) -> None:
        """Delete the marker of every source whose size or mtime differs from the one it records, or
        that another hash version wrote."""
        for shard, src in self.sources.items():
            m = marker(self.folder, shard)
            if m.exists():
                try:
                    info = json.loads(m.read_text())
                except ValueError:
                    info = {}
                if info.get("version") != HASH_VERSION or any(info.get(k) != v for k, v in _signature(src).items()):
                    m.unlink()

    def run_shard(self, shard: str) -> dict:
        source, _, name = shard.partition("/")
        src = self.sources[shard]
        if source == "pool":
            try:
                items = [(uid, None, data) for _, uid, data in iter_pool_tar(src)]
            except (tarfile.TarError, OSError) as exc:
                warn(f"{src}: unreadable tar ({exc.__class__.__name__}); its hashes are skipped")
                items = []
        else:
            t = read_bench(src, ["uid", "index", "image"]).to_pydict()
            items = list(zip(t["uid"], t["index"], t["image"]))
        rows, bad = _hash_rows(items, source, name)
        mf.write("hashes", rows, self.folder / source / f"{name}.parquet")
        return {"images": len(rows["uid"]), "unreadable": bad, "version": HASH_VERSION, **_signature(src)}


def compute_hashes(ws: Workspace, force: bool = False, benchmarks: Sequence[str] | None = None,
                   executor=None) -> dict:
    """Hash every pool shard and benchmark not hashed yet (one Parquet file + ``.done`` marker each);
    ``executor``: where the shards run (``--executor ray``: a Ray task per shard). Returns the counts.

    A marker remembers the size and mtime of the source file; when the source changed (a shard
    downloaded again, a benchmark re-added) its hashes are recomputed."""
    tars = {p.stem: p for p in sorted(ws.path("pool", "shards").glob("*.tar"))}
    benches = _bench_files(ws)
    if benchmarks is not None:
        benches = {k: v for k, v in benches.items() if k in set(benchmarks)}
    if not tars and not benches:
        raise MissingUpstream(f"pool shards or benchmarks in {ws.root}", "clipcurate download` or `clipcurate bench add")
    sources = {f"pool/{k}": v for k, v in tars.items()} | {f"bench/{k}": v for k, v in benches.items()}
    stage = HashStage(ws.path(HASH_FOLDER), sources, force=force)
    stage.reads = ("pool", "benchmarks")  # the runner checks they are complete
    stage.forget_changed()
    result = stage.run() if executor is None else executor.run_stage(stage)
    if result.counts.get("unreadable"):
        warn(f"hashes: {result.counts['unreadable']} unreadable images got null hashes")
    return result.counts


def load_hashes(ws: Workspace, source: str | None = None, name: str | None = None, ensure: bool = True) -> pa.Table:
    """The cached hashes (computing missing ones first unless ``ensure`` is False), optionally for
    one source / name."""
    if ensure:
        compute_hashes(ws)
    files = mf.get("hashes").files(ws.root)
    if source:
        files = [f for f in files if f.parent.name == source and (name is None or f.stem == name)]
    parts = [mf.read("hashes", f) for f in files]
    return pa.concat_tables(parts) if parts else mf.get("hashes").schema.empty_table()


def hash_lookup(ws: Workspace, source: str | None = None, ensure: bool = True
                ) -> dict[str, tuple[int | None, int | None]]:
    """uid → (phash, dhash) from the cache."""
    t = load_hashes(ws, source, ensure=ensure).to_pydict()
    return {u: (p, d) for u, p, d in zip(t["uid"], t["phash"], t["dhash"])}


def pair_hash_distances(ws: Workspace, pool_uids: Sequence[str], bench_uids: Sequence[str], ensure: bool = True
                        ) -> tuple[list[int | None], list[int | None]]:
    """(phash_dist, dhash_dist) for aligned pool/benchmark uid lists; None where a hash is missing."""
    table = hash_lookup(ws, ensure=ensure)
    ph, dh = [], []
    for a, b in zip(pool_uids, bench_uids):
        ha, hb = table.get(a, (None, None)), table.get(b, (None, None))
        ph.append(None if ha[0] is None or hb[0] is None else int(hamming(ha[0], hb[0])))
        dh.append(None if ha[1] is None or hb[1] is None else int(hamming(ha[1], hb[1])))
    return ph, dh


def pdq_table(ws: Workspace, source: str, name: str | None = None, ensure: bool = True
              ) -> tuple[list[str], list, np.ndarray]:
    """(uids, benchmark indices, [n, 4, 4] uint64 PDQ variants) of the cached hashes of ``source``
    (``pool`` or ``bench``; optionally one name); images without a PDQ are left out."""
    t = load_hashes(ws, source, name, ensure=ensure).to_pydict()
    keep = [i for i, b in enumerate(t["pdq"]) if b]
    arr = np.stack([np.frombuffer(t["pdq"][i], np.uint64).reshape(4, 4) for i in keep]) if keep else \
        np.zeros((0, 4, 4), np.uint64)
    return [t["uid"][i] for i in keep], [t["index"][i] for i in keep], arr
