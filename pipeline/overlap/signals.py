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

from clipcurate.core import manifest as mf
from clipcurate.core import registry
from clipcurate.core.console import log, warn
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.stage import marker, run_shards
from clipcurate.core.workspace import Workspace

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


def compute_hashes(ws: Workspace, force: bool = False, benchmarks: Sequence[str] | None = None,
                   executor=None) -> dict:
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

    if executor is not None and executor.kind != "local":  # --executor ray: a Ray task per shard
        from clipcurate.core import executor as ex
        result = ex.run_shards(executor, folder, list(sources), run, force=force, description="hashes")
    else:
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


# ----------------------------------------------------------------------------------------------
# 4. Signals for the overlap stage's pairs, and the combination rule

from clipcurate.core import config as _config  # noqa: E402

_config.section("signals", {
    "detector_tag": "",
    "hashes": True,
    "keypoints": True,
    "keypoint_method": "sift",
    "keypoint_max_pairs": 20000,
    "text": True,
    "text_threshold": 0.6,
}, {
    "detector_tag": "detector descriptors to use (embed/{tag} with kind detector); default: the only/first one",
    "hashes": "fill phash_dist / dhash_dist (hashes computed once per image, cached in hashes/)",
    "keypoints": "fill kp_inliers (SIFT/ORB + RANSAC) on the candidate pairs",
    "keypoint_method": "sift or orb",
    "keypoint_max_pairs": "verify at most this many pairs with keypoints (highest detector/CLIP score first)",
    "text": "fill text_sim for caption benchmarks and add pairs whose captions nearly match (MinHash LSH)",
    "text_threshold": "exact shingle Jaccard at or above which a caption match becomes a candidate pair",
})


# Signals whose "clean" vote is no evidence of a clean pair (they miss heavy copies by design).
CONFIRM_ONLY = ("phash", "dhash", "keypoints", "text")


def detector_rule(votes: Mapping[str, str | None]) -> str:
    """The combination rule once the copy detector has scored a pair (docs/detector.md).

    Signals are not peers: CLIP is semantic (it says *clean* on copies it cannot see and *overlap*
    on two photos of the same species — App. C), the detector is the copy authority, pHash / dHash
    and keypoints are exact but narrow, and keypoints are fooled by repetitive patterns. So:

    1. detector ``overlap`` → overlap; a pHash or caption-text ``overlap`` (near-identical file or
       caption) → overlap on its own;
    2. detector in its review band → overlap when an exact signal confirms it (keypoints or pHash at
       least in their review band), else review;
    3. detector ``clean``: review when keypoints or CLIP still say ``overlap`` (a human looks at what
       the detector might have missed), else clean.
    """
    det = votes.get("detector")
    if det == "overlap" or votes.get("phash") == "overlap" or votes.get("text") == "overlap":
        return "overlap"
    if det == "review":
        if votes.get("keypoints") in ("overlap", "review") or votes.get("phash") in ("overlap", "review"):
            return "overlap"
        return "review"
    if votes.get("keypoints") == "overlap" or votes.get("clip") == "overlap":
        return "review"
    return "clean"


def _opts(ws: Workspace) -> dict:
    return _config.Config.load(ws.root).get("signals")


def detector_tag(ws: Workspace, wanted: str = "") -> str | None:
    """The detector embeddings to use: ``wanted``, else the only / first ``embed/*`` of kind detector."""
    from clipcurate.overlap.stage import model_tags

    tags = model_tags(ws, "detector")
    if wanted:
        if wanted not in tags:
            raise ClipcurateError(f"[signals] detector_tag {wanted!r}: no embed/{wanted}/model.json of kind "
                                  f"detector; present: {', '.join(tags) or 'none'} (run `clipcurate embed --detector PATH`)")
        return wanted
    if len(tags) > 1:
        log(f"signals: several detector embeddings ({', '.join(tags)}); using {tags[0]} ([signals] detector_tag)")
    return tags[0] if tags else None


def _pool_vectors(ws: Workspace, tag: str, uids: set[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(uids, float32 vectors) of the finished pool shards of embed/{tag} (only ``uids`` if given)."""
    from clipcurate.overlap.stage import pool_shards, pool_uids

    shards, _ = pool_shards(ws, tag)
    out_u, out_v = [], []
    for s in shards:
        u = pool_uids(s, tag)
        x = np.load(s.npy, mmap_mode="r")
        sel = np.arange(len(u)) if uids is None else np.flatnonzero([v in uids for v in u])
        if len(sel):
            out_u += [u[i] for i in sel]
            out_v.append(np.asarray(x[sel], np.float32))
    dim = out_v[0].shape[1] if out_v else 0
    return out_u, (np.concatenate(out_v) if out_v else np.zeros((0, dim), np.float32))


def _bench_vectors(ws: Workspace, tag: str, name: str) -> dict[int, np.ndarray]:
    from clipcurate.overlap.stage import load_bench

    try:
        b = load_bench(ws, tag, name)
    except ClipcurateError:
        return {}
    return {int(i): np.asarray(v, np.float32) for i, v in zip(b.index, b.vectors)}


def _pair_cosines(ws: Workspace, tag: str, rows: list[dict]) -> list[float | None]:
    pool_u, pool_v = _pool_vectors(ws, tag, {r["pool_uid"] for r in rows})
    at = {u: i for i, u in enumerate(pool_u)}
    bench = {n: _bench_vectors(ws, tag, n) for n in {r["benchmark"] for r in rows}}
    out = []
    for r in rows:
        j, bv = at.get(r["pool_uid"]), bench[r["benchmark"]].get(int(r["bench_index"]))
        out.append(None if j is None or bv is None else float(pool_v[j] @ bv))
    return out


def _detector_candidates(ws: Workspace, tag: str, ths: Mapping[str, Mapping], existing: set) -> list[dict]:
    """Pairs whose detector score reaches the benchmark's detector review threshold and that the
    CLIP search did not propose: CLIP misses copies (App. C), so the detector searches too. One
    streaming pass over the pool's detector shards (one shard in memory at a time), all
    benchmarks at once, each with its own floor."""
    from clipcurate.overlap.stage import load_bench, pool_shards, pool_uids
    from clipcurate.overlap.search import Searcher

    benches = []
    for name in ths:
        try:
            benches.append(load_bench(ws, tag, name))
        except ClipcurateError:
            log(f"signals: no detector descriptors for benchmark {name!r} in embed/{tag}; run `clipcurate embed --detector`")
    shards, _ = pool_shards(ws, tag)
    if not benches or not shards:
        return []
    queries = np.concatenate([np.asarray(b.vectors, np.float32) for b in benches])
    floors = np.concatenate([np.full(len(b.vectors), float(ths[b.name]["detector"][1]), np.float32) for b in benches])
    which = np.concatenate([np.full(len(b.vectors), i) for i, b in enumerate(benches)])
    row = np.concatenate([np.arange(len(b.vectors)) for b in benches])
    searcher = Searcher(queries, 1, floors, backend="numpy")
    out, offset = [], 0
    for s in shards:
        x = np.load(s.npy)
        pairs = searcher.add(np.asarray(x, np.float32), offset)
        if len(pairs.query):
            uids = pool_uids(s, tag)
            for q, p, sc in zip(pairs.query, pairs.pos, pairs.score):
                b = benches[which[q]]
                key = (uids[p - offset], b.name, int(b.index[row[q]]))
                if key not in existing:
                    existing.add(key)
                    out.append({"pool_uid": key[0], "benchmark": b.name, "bench_index": key[2],
                                "bench_uid": b.uid[row[q]], "score_detector": float(sc), "origin": "detector"})
        offset += len(x)
    return out


def _pool_captions(ws: Workspace) -> dict[str, str]:
    out = {}
    for f in sorted(ws.path("pool", "manifest").glob("*.parquet")):
        try:
            t = mf.read("pool", f, columns=["uid", "caption", "status"]).to_pydict()
        except ClipcurateError:
            continue
        for u, c, s in zip(t["uid"], t["caption"], t["status"]):
            if s == "success" and c:
                out[u] = c
    return out


def _bench_captions(ws: Workspace, name: str) -> dict[int, tuple[str, list[str]]]:
    """index → (uid, captions) for caption benchmarks (rows with captions and no label)."""
    p = ws.path("benchmarks", name, "samples.parquet")
    if not p.is_file():
        return {}
    import pyarrow.parquet as pq

    names = pq.ParquetFile(p).schema_arrow.names
    if "captions" not in names:
        return {}
    t = pq.read_table(p, columns=[c for c in ("uid", "index", "label", "captions") if c in names]).to_pydict()
    labels = t.get("label") or [None] * len(t["index"])
    return {int(i): (u, list(c)) for u, i, lb, c in zip(t["uid"], t["index"], labels, t["captions"])
            if c and lb is None}


def _images_by_uid(ws: Workspace, uids: set[str]) -> dict[str, bytes]:
    """Pool image bytes for these uids (pool manifest → shard tar)."""
    where: dict[str, set[str]] = {}
    for f in sorted(ws.path("pool", "manifest").glob("*.parquet")):
        try:
            t = mf.read("pool", f, columns=["uid", "shard", "status"]).to_pydict()
        except ClipcurateError:
            continue
        for u, sh, st in zip(t["uid"], t["shard"], t["status"]):
            if u in uids and st == "success":
                where.setdefault(sh, set()).add(u)
    out = {}
    for shard, want in where.items():
        path = ws.path("pool", "shards", f"{shard}.tar")
        try:
            for _, uid, data in iter_pool_tar(path):
                if uid in want and data is not None:
                    out[uid] = data
        except (tarfile.TarError, OSError):
            warn(f"{path}: unreadable tar; its pairs get no keypoint signal")
    return out


def _bench_images(ws: Workspace, name: str, indices: set[int]) -> dict[int, bytes]:
    p = ws.path("benchmarks", name, "samples.parquet")
    if not p.is_file():
        return {}
    t = _read_bench(p, ["index", "image"]).to_pydict()
    return {int(i): b for i, b in zip(t["index"], t["image"]) if int(i) in indices and b}


def fill_pair_signals(ws: Workspace, clip_tag: str, rows: list[dict], ths: Mapping[str, Mapping]) -> list[dict]:
    """Fill the signal columns of the overlap stage's pairs, and add the pairs that only the
    detector or the captions propose. ``rows`` carry pool_uid, benchmark, bench_index, bench_uid,
    score_clip (and the other columns, None); ``ths`` is benchmark → signal → (overlap, review).
    Each signal that cannot be computed (no detector embeddings, no images) stays null, with a
    log line — never an error."""
    opts = _opts(ws)
    existing = {(r["pool_uid"], r["benchmark"], int(r["bench_index"])) for r in rows}
    extra: list[dict] = []

    # The detector: its score on every pair, and its own candidates.
    dtag = detector_tag(ws, opts["detector_tag"])
    if dtag:
        extra += _detector_candidates(ws, dtag, ths, existing)
    # Captions: near-identical pool captions of caption-benchmark texts (MinHash LSH).
    caps = {n: _bench_captions(ws, n) for n in ths} if opts["text"] else {}
    pool_caps = _pool_captions(ws) if any(caps.values()) else {}
    if pool_caps:
        texts = [((n, i), c) for n, d in caps.items() for i, (_, cs) in d.items() for c in cs]
        for uid, (n, i), _j in text_matches(pool_caps, texts, float(opts["text_threshold"])):
            if (uid, n, i) not in existing:
                existing.add((uid, n, i))
                extra.append({"pool_uid": uid, "benchmark": n, "bench_index": i, "bench_uid": caps[n][i][0],
                              "origin": "text"})
    if extra:
        log(f"signals: {len(extra)} candidate pairs beyond the CLIP search "
            f"({sum(e['origin'] == 'detector' for e in extra)} detector, {sum(e['origin'] == 'text' for e in extra)} text)")
        from clipcurate.review.decisions import pair_id

        clip = _pair_cosines(ws, clip_tag, extra)
        for e, c in zip(extra, clip):
            e.pop("origin")
            rows.append({"pair_id": pair_id(e["pool_uid"], e["benchmark"], e["bench_index"]), "pool_uid": e["pool_uid"],
                         "benchmark": e["benchmark"], "bench_index": e["bench_index"], "bench_uid": e["bench_uid"],
                         "score_clip": c, "score_detector": e.get("score_detector"), "phash_dist": None,
                         "dhash_dist": None, "kp_inliers": None, "text_sim": None, "rank": None})
    if not rows:
        return rows
    if dtag:
        for r, v in zip(rows, _pair_cosines(ws, dtag, rows)):
            r["score_detector"] = v
    if opts["hashes"]:
        try:
            ph, dh = pair_hash_distances(ws, [r["pool_uid"] for r in rows], [r["bench_uid"] for r in rows])
            for r, a, b in zip(rows, ph, dh):
                r["phash_dist"], r["dhash_dist"] = a, b
        except ClipcurateError as exc:
            log(f"signals: no perceptual hashes ({exc})")
    if caps and pool_caps:
        for r in rows:
            bc = caps.get(r["benchmark"], {}).get(int(r["bench_index"]))
            pc = pool_caps.get(r["pool_uid"])
            if bc and pc:
                r["text_sim"] = max(text_similarity(pc, c) for c in bc[1])
    if opts["keypoints"]:
        _fill_keypoints(ws, rows, opts)
    return rows


def _fill_keypoints(ws: Workspace, rows: list[dict], opts: dict) -> None:
    """Keypoint inliers for the most promising pairs (detector score, else CLIP score, first)."""
    order = sorted(range(len(rows)), key=lambda i: -(rows[i]["score_detector"] if rows[i]["score_detector"]
                                                     is not None else (rows[i]["score_clip"] or -9)))
    todo = order[: int(opts["keypoint_max_pairs"])]
    if len(todo) < len(rows):
        log(f"signals: keypoints on the first {len(todo)} of {len(rows)} pairs ([signals] keypoint_max_pairs)")
    pool_img = _images_by_uid(ws, {rows[i]["pool_uid"] for i in todo})
    bench_img: dict[str, dict[int, bytes]] = {}
    for n in {rows[i]["benchmark"] for i in todo}:
        bench_img[n] = _bench_images(ws, n, {int(rows[i]["bench_index"]) for i in todo if rows[i]["benchmark"] == n})
    cache = KeypointCache(opts["keypoint_method"])
    for i in todo:
        r = rows[i]
        a, b = pool_img.get(r["pool_uid"]), bench_img[r["benchmark"]].get(int(r["bench_index"]))
        if a is None or b is None:
            continue
        try:
            ka, kb = ("p", r["pool_uid"]), ("b", r["benchmark"], r["bench_index"])
            r["kp_inliers"] = cache.inliers(ka, None if ka in cache.features else _decode(a),
                                            kb, None if kb in cache.features else _decode(b))
        except Exception:  # an undecodable image: no keypoint signal for this pair
            r["kp_inliers"] = None


# ----------------------------------------------------------------------------------------------
# 5. Scorers for `overlap calibrate` (clipcurate.overlap.calibrate.SCORERS): fn(calib_set, q, p) → values


def load_workspace_descriptor(ws: Workspace, tag: str):
    """The descriptor that made embed/{tag} (model.json records its file and input size)."""
    from clipcurate.detector import stage as detector
    from clipcurate.core.io import read_json

    info = read_json(ws.path("embed", tag, "model.json"))
    if not info.get("file"):
        raise ClipcurateError(f"embed/{tag}/model.json names no detector file; rerun `clipcurate embed --detector PATH`")
    return detector.load_descriptor(info["file"], image_size=int(info.get("image_size") or 0),
                                    imagenet_norm=info.get("normalisation", "imagenet") == "imagenet")


def _calib_detector(cs, q: np.ndarray, p: np.ndarray) -> np.ndarray:
    ws = getattr(cs, "ws", None)
    tag = detector_tag(ws, _opts(ws)["detector_tag"]) if ws is not None else None
    if not tag:
        raise ClipcurateError("no detector embeddings (run `clipcurate detector train` then `clipcurate embed --detector PATH`)")
    desc = load_workspace_descriptor(ws, tag)
    full = desc.encode(cs.bench_images) @ desc.encode(cs.pool_images).T
    cs._detector_full = full
    return full[q, p]


def _calib_keypoints(cs, q: np.ndarray, p: np.ndarray, k: int = 3, method: str = "sift") -> np.ndarray:
    """Inliers on candidate pairs only, as in the stage: the top-k pool images of each benchmark
    image by the detector (when it ran), CLIP and pHash; every other pair stays NaN (not computed)."""
    nq, npool = len(cs.bench_images), len(cs.pool_images)
    scores = [np.asarray(cs.bench_emb, np.float32) @ np.asarray(cs.pool_emb, np.float32).T]
    if getattr(cs, "_detector_full", None) is not None:
        scores.append(cs._detector_full)
    hb = np.array([image_hashes(im)[0] for im in cs.bench_images])
    hp = np.array([image_hashes(im)[0] for im in cs.pool_images])
    scores.append(-hamming_matrix(hb, hp).astype(np.float32))
    cand = np.zeros((nq, npool), bool)
    for s in scores:
        top = np.argsort(-s, axis=1)[:, :k]
        cand[np.arange(nq)[:, None], top] = True
    full = np.full((nq, npool), np.nan)
    cache = KeypointCache(method)
    for i, j in zip(*np.nonzero(cand)):
        full[i, j] = cache.inliers(("b", i), cs.bench_images[i], ("p", j), cs.pool_images[j])
    return full[q, p]


def calibration_scorers() -> dict:
    return {"detector": _calib_detector, "keypoints": _calib_keypoints}
