"""Cheap and exact copy signals beside the embeddings: perceptual hashes, keypoints, caption MinHash.

Three signals, from cheapest to most exact:

1. **Perceptual hashes** (imagehash). pHash: shrink to 32×32 grey, 2-D DCT, keep the 8×8 lowest
   frequencies, one bit per coefficient (above / below their median). dHash: shrink to 9×8 grey, one
   bit per horizontal neighbour pair (brighter or not). Each is 64 bits; two images are compared by
   the Hamming distance of their hashes (0 = same, ~32 = unrelated). They are computed **once per
   image** and cached in the workspace (``hashes/pool/{shard}.parquet``, ``hashes/bench/{name}.parquet``,
   manifest ``hashes``), then any pair costs one XOR and a popcount.
2. **Local-feature verification** (OpenCV, no learned weights). SIFT (or ORB) keypoints in both
   images, nearest-neighbour matches kept by Lowe's ratio test, then a RANSAC homography: the number
   of matches that agree with one geometric transform. A copy (cropped, zoomed, stretched, slightly
   rotated) keeps many such *inliers*; two different images of the same object keep almost none. It
   costs milliseconds per pair, so it only verifies the candidate pairs the cheaper signals propose.
3. **Caption / label text overlap** (datasketch). Each text becomes the set of its character
   4-grams after normalisation (NFKC, lower case, punctuation → space); MinHash sketches those sets
   and an LSH index over the benchmark texts returns, for each pool caption, the texts whose
   estimated Jaccard similarity may pass the threshold; the exact Jaccard of the shingle sets is then
   the signal (``text_sim``).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import unicodedata
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from . import manifest as mf
from . import registry
from .console import log, warn
from .errors import ClipcurateError, MissingUpstream
from .stage import marker, run_shards
from .workspace import Workspace

HASH_FOLDER = "hashes"

mf.register(
    "hashes", version=1, glob="hashes/*/*.parquet", stage="detector",
    doc="Perceptual hashes (imagehash pHash and dHash, 64 bits each), computed once per pool and "
        "benchmark image; the Hamming distance between two hashes is the `phash_dist`/`dhash_dist` signal.",
    columns=[
        ("source", pa.string(), "`pool` or `bench`"),
        ("name", pa.string(), "pool shard or benchmark name"),
        ("uid", pa.string(), "sample uid (pool uid or benchmark uid)"),
        ("index", pa.int64(), "benchmark index (null for pool)"),
        ("phash", pa.int64(), "pHash, 64 bits as a signed integer (null when the image could not be read)"),
        ("dhash", pa.int64(), "dHash, 64 bits as a signed integer (null when the image could not be read)"),
    ])
registry.register_stage("hashes", HASH_FOLDER, "clipcurate detector hashes", manifests=("hashes",))


# ----------------------------------------------------------------------------------------------
# 1. Perceptual hashes

def _bits_to_int64(bits: np.ndarray) -> int:
    """8×8 booleans → one signed 64-bit integer (row-major, first bit most significant)."""
    return int(np.packbits(bits.astype(np.uint8).ravel()).view(">u8")[0].astype(np.int64))


def image_hashes(img: Image.Image) -> tuple[int, int]:
    """(pHash, dHash) of an image as signed 64-bit integers."""
    import imagehash

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


def _decode(data: bytes) -> Image.Image:
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
    rows = {"source": [], "name": [], "uid": [], "index": [], "phash": [], "dhash": []}
    bad = 0
    for uid, index, data in items:
        ph = dh = None
        if data is not None:
            try:
                ph, dh = image_hashes(_decode(data))
            except Exception:  # unreadable image: a null hash, counted
                bad += 1
        else:
            bad += 1
        for k, v in (("source", source), ("name", name), ("uid", uid), ("index", index), ("phash", ph),
                     ("dhash", dh)):
            rows[k].append(v)
    return rows, bad


def _bench_files(ws: Workspace) -> dict[str, Path]:
    return {p.parent.name: p for p in sorted(ws.path("benchmarks").glob("*/samples.parquet"))}


def _read_bench(path: Path, columns: list[str]) -> pa.Table:
    try:
        return mf.read("benchmarks", path, columns=columns)
    except ClipcurateError as exc:
        if "unknown manifest" not in str(exc):
            raise
        import pyarrow.parquet as pq

        return pq.read_table(path, columns=columns)


def compute_hashes(ws: Workspace, force: bool = False, benchmarks: Sequence[str] | None = None) -> dict:
    """Hash every pool shard and benchmark not hashed yet (one Parquet file + ``.done`` marker each).

    A marker remembers the size and mtime of the source file; when the source changed (a shard
    downloaded again, a benchmark re-added) its hashes are recomputed."""
    tars = {p.stem: p for p in sorted(ws.path("pool", "shards").glob("*.tar"))}
    benches = _bench_files(ws)
    if benchmarks is not None:
        benches = {k: v for k, v in benches.items() if k in set(benchmarks)}
    if not tars and not benches:
        raise MissingUpstream(f"pool shards or benchmarks in {ws.root}", "clipcurate download` or `clipcurate bench add")
    folder = ws.path(HASH_FOLDER)
    sources = {f"pool/{k}": v for k, v in tars.items()} | {f"bench/{k}": v for k, v in benches.items()}
    for shard, src in sources.items():
        m = marker(folder, shard)
        if m.exists():
            try:
                info = json.loads(m.read_text())
            except ValueError:
                info = {}
            if any(info.get(k) != v for k, v in _signature(src).items()):
                m.unlink()

    def run(shard: str) -> dict:
        source, _, name = shard.partition("/")
        src = sources[shard]
        if source == "pool":
            try:
                items = [(uid, None, data) for _, uid, data in iter_pool_tar(src)]
            except (tarfile.TarError, OSError) as exc:
                warn(f"{src}: unreadable tar ({exc.__class__.__name__}); its hashes are skipped")
                items = []
        else:
            t = _read_bench(src, ["uid", "index", "image"]).to_pydict()
            items = list(zip(t["uid"], t["index"], t["image"]))
        rows, bad = _hash_rows(items, source, name)
        mf.write("hashes", rows, folder / source / f"{name}.parquet")
        return {"images": len(rows["uid"]), "unreadable": bad, **_signature(src)}

    result = run_shards(folder, list(sources), run, force=force, description="hashes")
    if result.counts.get("unreadable"):
        warn(f"hashes: {result.counts['unreadable']} unreadable images got null hashes")
    return result.counts


def load_hashes(ws: Workspace, source: str | None = None, name: str | None = None) -> pa.Table:
    """The cached hashes (computing missing ones first), optionally for one source / name."""
    compute_hashes(ws)
    files = mf.get("hashes").files(ws.root)
    if source:
        files = [f for f in files if f.parent.name == source and (name is None or f.stem == name)]
    parts = [mf.read("hashes", f) for f in files]
    return pa.concat_tables(parts) if parts else mf.get("hashes").schema.empty_table()


def hash_lookup(ws: Workspace, source: str | None = None) -> dict[str, tuple[int | None, int | None]]:
    """uid → (phash, dhash) from the cache."""
    t = load_hashes(ws, source).to_pydict()
    return {u: (p, d) for u, p, d in zip(t["uid"], t["phash"], t["dhash"])}


def pair_hash_distances(ws: Workspace, pool_uids: Sequence[str], bench_uids: Sequence[str]
                        ) -> tuple[list[int | None], list[int | None]]:
    """(phash_dist, dhash_dist) for aligned pool/benchmark uid lists; None where a hash is missing."""
    table = hash_lookup(ws)
    ph, dh = [], []
    for a, b in zip(pool_uids, bench_uids):
        ha, hb = table.get(a, (None, None)), table.get(b, (None, None))
        ph.append(None if ha[0] is None or hb[0] is None else int(hamming(ha[0], hb[0])))
        dh.append(None if ha[1] is None or hb[1] is None else int(hamming(ha[1], hb[1])))
    return ph, dh


# ----------------------------------------------------------------------------------------------
# 2. Local features + RANSAC

KP_SIDE = 256  # images are rescaled so their longer side is this many pixels before detection


def keypoint_features(img: Image.Image, method: str = "sift", max_features: int = 500):
    """(xy [K, 2] float32 in the rescaled frame, descriptors [K, D]) — K may be 0.

    Tiny images give too few keypoints and huge ones too many, so the image is first rescaled to a
    fixed longer side (upscaling included: detectors need some pixels per corner)."""
    import cv2

    g = np.asarray(img.convert("L"))
    h, w = g.shape
    s = KP_SIDE / max(h, w)
    g = cv2.resize(g, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_CUBIC)
    if method == "sift":
        det = cv2.SIFT_create(nfeatures=max_features)
    elif method == "orb":
        det = cv2.ORB_create(nfeatures=max_features, edgeThreshold=15, patchSize=15, fastThreshold=10)
    else:
        raise ClipcurateError(f"keypoint method {method!r} unknown; use sift or orb")
    kps, desc = det.detectAndCompute(g, None)
    if desc is None or not kps:
        return np.zeros((0, 2), np.float32), None
    return np.array([k.pt for k in kps], np.float32), desc


def ransac_inliers(fa, fb, ratio: float = 0.8, reproj_px: float = 6.0, method: str = "sift") -> int:
    """Matches between two feature sets that one homography explains (0 when fewer than 4 matches).

    1. For each descriptor of A, its two nearest neighbours in B; keep the match when the nearest is
       clearly nearer than the second (Lowe's ratio test) — repetitive texture is ambiguous and drops.
    2. Keep each B keypoint at most once (the best match), so one point cannot vote many times.
    3. RANSAC fits a homography to random 4-match samples and counts the matches that land within
       ``reproj_px`` pixels of where it maps them; the best count is the signal."""
    import cv2

    (xa, da), (xb, db) = fa, fb
    if da is None or db is None or len(xa) < 4 or len(xb) < 4:
        return 0
    norm = cv2.NORM_L2 if method == "sift" else cv2.NORM_HAMMING
    knn = cv2.BFMatcher(norm).knnMatch(da, db, k=2)
    best: dict[int, tuple[float, int]] = {}
    for pair in knn:
        if len(pair) < 2:
            continue
        m, n = pair
        if m.distance < ratio * n.distance and (m.trainIdx not in best or m.distance < best[m.trainIdx][0]):
            best[m.trainIdx] = (m.distance, m.queryIdx)
    if len(best) < 4:
        return 0
    src = np.float32([xa[q] for _, q in best.values()]).reshape(-1, 1, 2)
    dst = np.float32([xb[t] for t in best]).reshape(-1, 1, 2)
    H, mask = cv2.findHomography(src, dst, cv2.RANSAC, reproj_px, maxIters=2000, confidence=0.995)
    if H is None or mask is None:
        return 0
    return int(mask.sum())


def keypoint_inliers(img_a: Image.Image, img_b: Image.Image, method: str = "sift") -> int:
    """The keypoint signal for one pair of images (``kp_inliers``)."""
    return ransac_inliers(keypoint_features(img_a, method), keypoint_features(img_b, method), method=method)


class KeypointCache:
    """Features computed once per image while verifying many pairs: ``inliers(key_a, img_a, key_b, img_b)``."""

    def __init__(self, method: str = "sift"):
        self.method = method
        self.features: dict = {}

    def get(self, key, img: Image.Image | None):
        if key not in self.features:
            self.features[key] = (keypoint_features(img, self.method) if img is not None
                                  else (np.zeros((0, 2), np.float32), None))
        return self.features[key]

    def inliers(self, key_a, img_a, key_b, img_b) -> int:
        return ransac_inliers(self.get(key_a, img_a), self.get(key_b, img_b), method=self.method)


# ----------------------------------------------------------------------------------------------
# 3. Caption / label text: MinHash LSH

SHINGLE = 4
NUM_PERM = 128
_PUNCT = re.compile(r"[\W_]+", re.UNICODE)


def normalize_text(text: str) -> str:
    """NFKC, lower case, every run of punctuation/space → one space."""
    return _PUNCT.sub(" ", unicodedata.normalize("NFKC", text or "").lower()).strip()


def shingles(text: str, k: int = SHINGLE) -> set[str]:
    """Character k-grams of the normalised text (the whole text when shorter than k; empty text → ∅).
    Characters, not words: captions are short, and a typo or plural changes one word but only a few
    of its k-grams."""
    t = normalize_text(text)
    if not t:
        return set()
    if len(t) <= k:
        return {t}
    return {t[i: i + k] for i in range(len(t) - k + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def text_similarity(a: str, b: str) -> float:
    """Exact Jaccard similarity of the two texts' shingle sets (the ``text_sim`` signal)."""
    return jaccard(shingles(a), shingles(b))


def _minhash(sh: set[str], num_perm: int = NUM_PERM):
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=1)
    m.update_batch([s.encode("utf-8") for s in sorted(sh)])
    return m


class TextIndex:
    """MinHash LSH over a set of texts (e.g. a benchmark's captions): ``query(text)`` returns
    ``[(key, jaccard)]`` for the indexed texts whose exact shingle Jaccard is ≥ ``threshold``.

    The LSH bands are tuned by datasketch for ``threshold``: a pair at that Jaccard is found with
    high probability, pairs far below it almost never become candidates, and the candidates are
    verified exactly, so what comes back never falls below the threshold."""

    def __init__(self, texts: Mapping | Iterable[tuple], threshold: float = 0.7, num_perm: int = NUM_PERM):
        from datasketch import MinHashLSH

        if not 0 < threshold <= 1:
            raise ClipcurateError(f"text threshold {threshold} must be in (0, 1]")
        self.threshold, self.num_perm = threshold, num_perm
        # The index keeps a slightly lower threshold than asked, so that borderline pairs whose
        # MinHash estimate comes out low are still candidates; the exact check decides.
        self.lsh = MinHashLSH(threshold=max(0.05, threshold - 0.1), num_perm=num_perm)
        self.shingles: dict = {}
        items = texts.items() if isinstance(texts, Mapping) else texts
        with self.lsh.insertion_session() as session:
            for key, text in items:
                sh = shingles(text)
                if not sh or key in self.shingles:
                    continue
                self.shingles[key] = sh
                session.insert(key, _minhash(sh, num_perm))

    def __len__(self) -> int:
        return len(self.shingles)

    def query(self, text: str) -> list[tuple[object, float]]:
        sh = shingles(text)
        if not sh:
            return []
        out = []
        for key in self.lsh.query(_minhash(sh, self.num_perm)):
            j = jaccard(sh, self.shingles[key])
            if j >= self.threshold:
                out.append((key, j))
        return sorted(out, key=lambda kv: -kv[1])


def text_matches(pool: Mapping[str, str] | Iterable[tuple[str, str]], bench: Mapping | Iterable[tuple],
                 threshold: float = 0.7) -> list[tuple[str, object, float]]:
    """(pool_uid, bench_key, jaccard) for every pool caption near-identical to a benchmark text.
    The benchmark side is indexed (it is the smaller); the pool streams through it."""
    index = TextIndex(bench, threshold)
    log(f"text: {len(index)} benchmark texts indexed (MinHash LSH, Jaccard ≥ {threshold})")
    items = pool.items() if isinstance(pool, Mapping) else pool
    return [(uid, key, j) for uid, text in items for key, j in index.query(text)]
