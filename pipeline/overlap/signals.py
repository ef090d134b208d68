"""The signals of the overlap stage's pairs beyond CLIP: detector, hashes, keypoints, captions.

:func:`fill_pair_signals` takes the pairs the CLIP search found and

1. lets the **copy detector** search too (CLIP misses copies, App. C): one streaming pass of the
   detector's pool embeddings against the benchmark ones adds the pairs whose detector cosine
   reaches the benchmark's detector review threshold; then every pair gets its detector cosine;
2. adds the pairs whose **captions** nearly match a caption benchmark's text (MinHash LSH,
   :mod:`clipcurate.overlap.captions`), and gives every pair of a caption benchmark its ``text_sim``;
3. adds the pairs whose edit-tolerant **PDQ** distance (mirror and border-trim variants) is within
   the review threshold, and fills the **perceptual hash** distances (pHash, dHash, PDQ) from the
   cache (:mod:`clipcurate.overlap.hashes`);
4. verifies the most promising pairs with their images (:mod:`clipcurate.overlap.verify`):
   **keypoints** with a guarded affine fit, checked by alignment (``kp_inliers``, ``kp_ncc``).

Each signal that cannot be computed (no detector embeddings, no images) stays null, with a log
line — never an error. The ``[signals]`` options switch each one on or off. The same signals score
the planted pairs of ``overlap calibrate`` (:func:`calibration_scorers`).
"""

from __future__ import annotations

import tarfile
from typing import Callable, Mapping

import numpy as np
import pyarrow.parquet as pq

from clipcurate.core import config
from clipcurate.core import manifest as mf
from clipcurate.core.console import log, warn
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.io import read_json
from clipcurate.core.workspace import Workspace
from clipcurate.detector import load_descriptor
from clipcurate.overlap.captions import text_matches, text_similarity
from clipcurate.overlap.hashes import compute_hashes, iter_pool_tar, open_image, pair_hash_distances, pdq_table, \
    read_bench
from clipcurate.overlap.inputs import load_bench, model_tags, pool_shards, pool_uids
from clipcurate.overlap.keypoints import KeypointCache
from clipcurate.overlap.verify import PairVerifier, keypoint_votes, pack, pdq_distance_matrix, pdq_variants
from clipcurate.overlap.search import Searcher
from clipcurate.review import pair_id

config.section("signals", {
    "detector_tag": "",
    "hashes": True,
    "keypoints": True,
    "keypoint_method": "sift",
    "keypoint_max_pairs": 20000,
    "keypoint_topk": 6,
    "keypoint_search_max_pool": 2000,
    "text": True,
    "text_threshold": 0.6,
}, {
    "detector_tag": "detector descriptors to use (embed/{tag} with kind detector); default: the only/first one",
    "hashes": "fill phash_dist / dhash_dist / pdq_dist (hashes computed once per image, cached in hashes/) and add "
              "the pairs within the PDQ review threshold (a search over all pool hashes)",
    "keypoints": "fill kp_inliers and kp_ncc (SIFT + guarded affine fit + alignment) on the candidate pairs",
    "keypoint_method": "sift (guarded affine fit + alignment) or orb (the plain homography inlier count)",
    "keypoint_max_pairs": "verify at most this many pairs with their images (highest detector/CLIP score first)",
    "keypoint_topk": "pairs verified per benchmark sample: its k best by detector, by CLIP, by PDQ and by keypoint "
                     "votes (as calibrate does)",
    "keypoint_search_max_pool": "pools up to this many images are also searched by keypoint votes (all descriptors "
                                "in one FLANN index, ~0.25 MB per image); larger pools skip that search",
    "text": "fill text_sim for caption benchmarks and add pairs whose captions nearly match (MinHash LSH)",
    "text_threshold": "exact shingle Jaccard at or above which a caption match becomes a candidate pair",
})


def _opts(ws: Workspace) -> dict:
    return config.Config.load(ws.root).get("signals")


def detector_tag(ws: Workspace, wanted: str = "") -> str | None:
    """The detector embeddings to use: ``wanted``, else the only / first ``embed/*`` of kind detector."""
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


def _pdq_candidates(ws: Workspace, ths: Mapping[str, Mapping], existing: set, chunk: int = 4096) -> list[dict]:
    """Pairs whose PDQ distance (the benchmark image against any of the pool image's four variants)
    is within the benchmark's PDQ review threshold and that no other search proposed: a recompressed,
    resized, mirrored or letterboxed copy is found whatever the embeddings say. All pool hashes
    against all benchmark hashes, a chunk of pool images at a time (XOR + popcount)."""
    p_uid, _, p_arr = pdq_table(ws, "pool", ensure=False)
    out = []
    for name in ths:
        b_uid, b_idx, b_arr = pdq_table(ws, "bench", name, ensure=False)
        if not len(b_arr) or not len(p_arr):
            continue
        floor = int(ths[name]["pdq"][1])
        for start in range(0, len(p_arr), chunk):
            d = pdq_distance_matrix(b_arr[:, 0], p_arr[start:start + chunk])
            for bi, pj in zip(*np.nonzero(d <= floor)):
                key = (p_uid[start + pj], name, int(b_idx[bi]))
                if key not in existing:
                    existing.add(key)
                    out.append({"pool_uid": key[0], "benchmark": name, "bench_index": key[2], "bench_uid": b_uid[bi],
                                "origin": "pdq"})
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


def _bench_images(ws: Workspace, name: str, indices: set[int] | None) -> dict[int, bytes]:
    """index → image bytes of a benchmark (only ``indices`` when given)."""
    p = ws.path("benchmarks", name, "samples.parquet")
    if not p.is_file():
        return {}
    t = read_bench(p, ["index", "image"]).to_pydict()
    return {int(i): b for i, b in zip(t["index"], t["image"]) if (indices is None or int(i) in indices) and b}


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
    # PDQ: near-identical files, mirrored or framed, whatever the embeddings say.
    hashed = False
    if opts["hashes"]:
        try:
            compute_hashes(ws)  # once; every read below uses the cache as it is
            hashed = True
        except ClipcurateError as exc:
            log(f"signals: no perceptual hashes ({exc})")
    if hashed:
        extra += _pdq_candidates(ws, ths, existing)
    # Keypoint votes over the whole pool (small pools): crops and App. C copies no hash sees.
    verifier = PairVerifier()
    if opts["keypoints"] and opts["keypoint_method"] == "sift":
        extra += _keypoint_candidates(ws, ths, existing, opts, verifier)
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
    voted: set = set()
    if extra:
        log(f"signals: {len(extra)} candidate pairs beyond the CLIP search "
            f"({sum(e['origin'] == 'detector' for e in extra)} detector, {sum(e['origin'] == 'pdq' for e in extra)} "
            f"PDQ, {sum(e['origin'] == 'keypoints' for e in extra)} keypoint votes, "
            f"{sum(e['origin'] == 'text' for e in extra)} text)")
        clip = _pair_cosines(ws, clip_tag, extra)
        for e, c in zip(extra, clip):
            if e.pop("origin") == "keypoints":
                voted.add((e["pool_uid"], e["benchmark"], e["bench_index"]))
            rows.append({"pair_id": pair_id(e["pool_uid"], e["benchmark"], e["bench_index"]), "pool_uid": e["pool_uid"],
                         "benchmark": e["benchmark"], "bench_index": e["bench_index"], "bench_uid": e["bench_uid"],
                         "score_clip": c, "score_detector": e.get("score_detector"), "phash_dist": None,
                         "dhash_dist": None, "kp_inliers": None, "text_sim": None, "pdq_dist": None,
                         "kp_ncc": None, "rank": None})
    if not rows:
        return rows
    if dtag:
        for r, v in zip(rows, _pair_cosines(ws, dtag, rows)):
            r["score_detector"] = v
    if hashed:
        ph, dh = pair_hash_distances(ws, [r["pool_uid"] for r in rows], [r["bench_uid"] for r in rows], ensure=False)
        for r, a, b in zip(rows, ph, dh):
            r["phash_dist"], r["dhash_dist"] = a, b
        _fill_pdq(ws, rows)
    if caps and pool_caps:
        for r in rows:
            bc = caps.get(r["benchmark"], {}).get(int(r["bench_index"]))
            pc = pool_caps.get(r["pool_uid"])
            if bc and pc:
                r["text_sim"] = max(text_similarity(pc, c) for c in bc[1])
    if opts["keypoints"]:
        _fill_keypoints(ws, rows, opts, verifier, voted)
    return rows


def _fill_pdq(ws: Workspace, rows: list[dict]) -> None:
    """``pdq_dist`` of every pair from the hash cache (None where a hash is missing)."""
    p_uid, _, p_arr = pdq_table(ws, "pool", ensure=False)
    pool = dict(zip(p_uid, p_arr))
    bench = {}
    for n in {r["benchmark"] for r in rows}:
        u, _, a = pdq_table(ws, "bench", n, ensure=False)
        bench.update(zip(u, a))
    for r in rows:
        a, b = bench.get(r["bench_uid"]), pool.get(r["pool_uid"])
        r["pdq_dist"] = None if a is None or b is None else int(pdq_distance_matrix(a[:1], b[None])[0, 0])


def _verify_candidates(rows: list[dict], k: int, voted: set = frozenset()) -> list[int]:
    """Row indices to verify with keypoints: for each benchmark sample, its ``k`` best pairs by the
    detector, by CLIP and by PDQ — the same candidates ``overlap calibrate`` verifies, so the
    calibrated rule sees the pairs it was measured on — and the pairs the keypoint votes proposed
    (``voted``). Ordered by detector, else CLIP, score."""
    pick = {i for i, r in enumerate(rows) if (r["pool_uid"], r["benchmark"], int(r["bench_index"])) in voted}
    by: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        by.setdefault((r["benchmark"], int(r["bench_index"])), []).append(i)
    keys = [lambda r: r["score_detector"], lambda r: r["score_clip"],
            lambda r: None if r["pdq_dist"] is None else -r["pdq_dist"]]
    for idx in by.values():
        for key in keys:
            scored = [i for i in idx if key(rows[i]) is not None]
            pick.update(sorted(scored, key=lambda i: -key(rows[i]))[:k])
    return sorted(pick, key=lambda i: -(rows[i]["score_detector"] if rows[i]["score_detector"] is not None
                                        else (rows[i]["score_clip"] or -9)))


def _keypoint_candidates(ws: Workspace, ths: Mapping[str, Mapping], existing: set, opts: dict,
                         verifier: PairVerifier) -> list[dict]:
    """The ``keypoint_topk`` pool images with the most keypoint votes (at least 8) for each
    benchmark image (:func:`clipcurate.overlap.verify.keypoint_votes`), when the pool has at most
    ``keypoint_search_max_pool`` images; their features stay in ``verifier`` for the verification."""
    uids = _pool_uid_list(ws)
    if not uids or len(uids) > int(opts["keypoint_search_max_pool"]):
        if uids:
            log(f"signals: {len(uids)} pool images > signals.keypoint_search_max_pool: no keypoint search")
        return []
    got = _images_by_uid(ws, set(uids))
    pool = {u: got[u] for u in sorted(got)}  # uid order, not the tars' (the downloader's threads write
    p_keys = [("p", u) for u in pool]       # members as they finish): the FLANN index is then the same
    p_feats = []
    for key, data in zip(p_keys, pool.values()):
        try:
            p_feats.append(verifier.features_of(key, open_image(data)))
        except Exception:  # an undecodable image: it proposes nothing
            p_feats.append((np.zeros((0, 2), np.float32), None))
    out = []
    for name in ths:
        b = _bench_images(ws, name, None)
        b_keys = [("b", name, i) for i in b]
        b_feats = []
        for key, data in zip(b_keys, b.values()):
            try:
                b_feats.append(verifier.features_of(key, open_image(data)))
            except Exception:
                b_feats.append((np.zeros((0, 2), np.float32), None))
        votes = keypoint_votes(b_feats, p_feats)
        buid = _bench_uids(ws, name)
        for bi, key in enumerate(b_keys):
            for pj in np.argsort(-votes[bi], kind="stable")[: int(opts["keypoint_topk"])]:
                if votes[bi, pj] < 8:  # a few chance matches between unrelated images are common
                    break
                k = (p_keys[pj][1], name, int(key[2]))
                if k not in existing and k[2] in buid:
                    existing.add(k)
                    out.append({"pool_uid": k[0], "benchmark": name, "bench_index": k[2], "bench_uid": buid[k[2]],
                                "origin": "keypoints"})
    return out


def _pool_uid_list(ws: Workspace) -> list[str]:
    out = []
    for f in sorted(ws.path("pool", "manifest").glob("*.parquet")):
        try:
            t = mf.read("pool", f, columns=["uid", "status"]).to_pydict()
        except ClipcurateError:
            continue
        out += [u for u, st in zip(t["uid"], t["status"]) if st == "success"]
    return out


def _bench_uids(ws: Workspace, name: str) -> dict[int, str]:
    p = ws.path("benchmarks", name, "samples.parquet")
    if not p.is_file():
        return {}
    t = read_bench(p, ["index", "uid"]).to_pydict()
    return {int(i): u for i, u in zip(t["index"], t["uid"])}


def _fill_keypoints(ws: Workspace, rows: list[dict], opts: dict, verifier: PairVerifier | None = None,
                    voted: set = frozenset()) -> None:
    """Keypoint inliers and alignment for the candidate pairs (:func:`_verify_candidates`);
    features computed once per image."""
    todo = _verify_candidates(rows, int(opts["keypoint_topk"]), voted)[: int(opts["keypoint_max_pairs"])]
    log(f"signals: keypoints verify {len(todo)} of {len(rows)} pairs (the best {opts['keypoint_topk']} per benchmark "
        f"sample by detector, CLIP and PDQ; at most signals.keypoint_max_pairs)")
    pool_img = _images_by_uid(ws, {rows[i]["pool_uid"] for i in todo})
    bench_img: dict[str, dict[int, bytes]] = {}
    for n in {rows[i]["benchmark"] for i in todo}:
        bench_img[n] = _bench_images(ws, n, {int(rows[i]["bench_index"]) for i in todo if rows[i]["benchmark"] == n})
    sift = opts["keypoint_method"] == "sift"
    cache = KeypointCache(opts["keypoint_method"])
    verifier, decoded = verifier or PairVerifier(), {}

    def image(key, data):  # decoded once per image
        if key not in decoded:
            decoded[key] = open_image(data)
        return decoded[key]

    for i in todo:
        r = rows[i]
        a, b = pool_img.get(r["pool_uid"]), bench_img[r["benchmark"]].get(int(r["bench_index"]))
        if a is None or b is None:
            continue
        ka, kb = ("p", r["pool_uid"]), ("b", r["benchmark"], r["bench_index"])
        try:
            ia, ib = image(ka, a), image(kb, b)
            if sift:
                r["kp_inliers"], r["kp_ncc"] = verifier.verify(kb, ib, ka, ia)
            else:
                r["kp_inliers"] = cache.inliers(ka, ia, kb, ib)
        except Exception:  # an undecodable image: no keypoint signal for this pair
            r["kp_inliers"] = r["kp_ncc"] = None


# ----------------------------------------------------------------------------------------------
# Scorers for `overlap calibrate` (clipcurate.overlap.calibrate.SCORERS): fn(calib_set, q, p) → values


def load_workspace_descriptor(ws: Workspace, tag: str):
    """The descriptor that made embed/{tag} (model.json records its file and input size)."""
    info = read_json(ws.path("embed", tag, "model.json"))
    if not info.get("file"):
        raise ClipcurateError(f"embed/{tag}/model.json names no detector file; rerun `clipcurate embed --detector PATH`")
    return load_descriptor(info["file"], image_size=int(info.get("image_size") or 0),
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


def _pdq_full(cs) -> np.ndarray:
    if getattr(cs, "_pdq_full", None) is None:
        b = pack(np.stack([pdq_variants(im)[0] for im in cs.bench_images]))
        p = pack(np.stack([pdq_variants(im) for im in cs.pool_images]))
        cs._pdq_full = pdq_distance_matrix(b, p).astype(np.float64)
    return cs._pdq_full


def _calib_pdq(cs, q: np.ndarray, p: np.ndarray) -> np.ndarray:
    return _pdq_full(cs)[q, p]


def _verified(cs, k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Inliers and alignment NCC on candidate pairs only, as in the stage: the top-k pool images of
    each benchmark image by the detector (when it ran), CLIP and PDQ; other pairs: NaN (not computed)."""
    if getattr(cs, "_verified", None) is not None:
        return cs._verified
    nq, npool = len(cs.bench_images), len(cs.pool_images)
    scores = [np.asarray(cs.bench_emb, np.float32) @ np.asarray(cs.pool_emb, np.float32).T, -_pdq_full(cs)]
    if getattr(cs, "_detector_full", None) is not None:
        scores.append(cs._detector_full)
    cand = np.zeros((nq, npool), bool)
    for s in scores:
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        cand[np.arange(nq)[:, None], top] = True
    inl, ncc = np.full((nq, npool), np.nan), np.full((nq, npool), np.nan)
    if getattr(cs, "verifier", None) is None:
        cs.verifier = PairVerifier()  # a set made from the same pool images shares it (their features)
    v, mine = cs.verifier, id(cs)
    for i, j in zip(*np.nonzero(cand)):
        n, c = v.verify(("b", mine, i), cs.bench_images[i], ("p", j), cs.pool_images[j])
        inl[i, j], ncc[i, j] = n, (np.nan if c is None else c)
    cs._verified = (inl, ncc)
    return cs._verified


def _calib_keypoints(cs, q: np.ndarray, p: np.ndarray) -> np.ndarray:
    return _verified(cs)[0][q, p]


def _calib_ncc(cs, q: np.ndarray, p: np.ndarray) -> np.ndarray:
    return _verified(cs)[1][q, p]


def calibration_scorers() -> dict:
    """name → scorer (order matters: the detector first, so keypoint candidates can use it)."""
    return {"detector": _calib_detector, "pdq": _calib_pdq, "keypoints": _calib_keypoints, "kp_ncc": _calib_ncc}


# ----------------------------------------------------------------------------------------------
# Pool image against pool image, for query expansion (clipcurate.overlap.expand)

POOL_PAIR_SIGNALS = ("detector", "phash", "dhash", "pdq", "keypoints", "kp_ncc")


def pool_pair_signals(ws: Workspace, pairs: list[tuple[str, str]], names=POOL_PAIR_SIGNALS,
                      verify_if: Callable[[dict], bool] | None = None) -> list[dict]:
    """The signal columns (``score_detector``, ``phash_dist``, ...) of (pool uid A, pool uid B) pairs,
    A in the role the benchmark image has in the stage's pairs: the detector's cosine, the cached
    hashes (A's PDQ as taken, B's with its mirror / trimmed variants) and the keypoint fit with its
    alignment. Only the signals in ``names`` are computed; a signal that cannot be (no detector
    embeddings, no hash, no image) stays None. ``verify_if(row)``: called with a pair's other
    signals before its keypoint fit; False skips the fit (its columns stay None)."""
    out = [dict.fromkeys(("score_detector", "phash_dist", "dhash_dist", "pdq_dist", "kp_inliers", "kp_ncc"))
           for _ in pairs]
    if not pairs:
        return out
    opts = _opts(ws)
    uids = {u for p in pairs for u in p}
    dtag = detector_tag(ws, opts["detector_tag"]) if "detector" in names else None
    if dtag:
        pu, pv = _pool_vectors(ws, dtag, uids)
        at = {u: i for i, u in enumerate(pu)}
        for o, (a, b) in zip(out, pairs):
            if a in at and b in at:
                o["score_detector"] = float(pv[at[a]] @ pv[at[b]])
    if opts["hashes"] and {"phash", "dhash", "pdq"} & set(names):
        ph, dh = pair_hash_distances(ws, [b for _, b in pairs], [a for a, _ in pairs], ensure=False)
        p_uid, _, p_arr = pdq_table(ws, "pool", ensure=False)
        pdq = dict(zip(p_uid, p_arr))
        for o, (a, b), x, y in zip(out, pairs, ph, dh):
            o["phash_dist"], o["dhash_dist"] = x, y
            if a in pdq and b in pdq:
                o["pdq_dist"] = int(pdq_distance_matrix(pdq[a][:1], pdq[b][None])[0, 0])
    if opts["keypoints"] and opts["keypoint_method"] == "sift" and {"keypoints", "kp_ncc"} & set(names):
        todo = [(o, p) for o, p in zip(out, pairs) if verify_if is None or verify_if(o)]
        data = _images_by_uid(ws, {u for _, p in todo for u in p})
        verifier, decoded = PairVerifier(), {}
        for o, (a, b) in todo:
            if a not in data or b not in data:
                continue
            try:
                for u in (a, b):
                    if u not in decoded:
                        decoded[u] = open_image(data[u])
                o["kp_inliers"], o["kp_ncc"] = verifier.verify(("p", a), decoded[a], ("p", b), decoded[b])
            except Exception:  # an undecodable image: no keypoint signal for this pair
                o["kp_inliers"] = o["kp_ncc"] = None
    return out
