"""Copy signals: perceptual hashes (vs imagehash), their workspace cache, keypoints + RANSAC,
caption MinHash LSH (vs brute force), the detector's combination rule, and the overlap stage
using the detector's descriptors."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from clipcurate.overlap import captions, hashes, keypoints, rules
from clipcurate.core.augment import app_c_copy

from _detector_helpers import pool_images, write_bench, write_pool


def blobs(seed: int, size: int = 192) -> Image.Image:
    """A textured image (smooth random colour blobs): plenty of keypoints, no repetition."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).resize((size, size),
                                                                                     Image.Resampling.BICUBIC)


# ---------------------------------------------------------------------------------------------- hashes

def test_hashes_and_hamming_match_imagehash():
    import imagehash

    imgs = pool_images(6) + [app_c_copy(im, i, strength=0.3) for i, im in enumerate(pool_images(6))]
    for im in imgs:
        ph, dh = hashes.image_hashes(im)
        assert np.int64(ph).view(np.uint64) == int(str(imagehash.phash(im)), 16)
        assert np.int64(dh).view(np.uint64) == int(str(imagehash.dhash(im)), 16)
    hs = [hashes.image_hashes(im)[0] for im in imgs]
    ref = np.array([[imagehash.phash(a) - imagehash.phash(b) for b in imgs] for a in imgs])
    np.testing.assert_array_equal(hashes.hamming_matrix(hs, hs), ref)
    np.testing.assert_array_equal(hashes.hamming(hs, hs[::-1]), np.diag(ref[:, ::-1]))


def test_hash_cache_once_per_image_and_refreshed_when_source_changes(ws):
    imgs = pool_images(10)
    puids = write_pool(ws, imgs)
    buids = write_bench(ws, "cifar10", imgs[:4] + pool_images(2, seed=5))
    counts = hashes.compute_hashes(ws)
    assert counts["images"] == 16 and counts.get("unreadable", 0) == 0
    f = ws.path("hashes", "pool", "00000.parquet")
    mtime = f.stat().st_mtime_ns
    hashes.compute_hashes(ws)  # cached: nothing recomputed
    assert f.stat().st_mtime_ns == mtime
    # the same image in pool and benchmark (JPEG vs PNG bytes): pHash distance small; others far
    ph, dh = hashes.pair_hash_distances(ws, puids[:4] + puids[5:6], buids[:4] + buids[:1])
    assert max(ph[:4]) <= 4 and ph[4] > 10
    # the shard changes (downloaded again): its hashes are recomputed
    write_pool(ws, pool_images(3, seed=7))
    os.utime(ws.path("pool", "shards", "00000.tar"), ns=(1, 1))
    assert hashes.compute_hashes(ws)["images"] == 3 + 6
    assert f.stat().st_mtime_ns != mtime
    t = hashes.load_hashes(ws, "pool").to_pydict()
    assert len(t["uid"]) == 3 and all(v is not None for v in t["phash"])


# ---------------------------------------------------------------------------------------------- keypoints

@pytest.mark.parametrize("method", ["sift", "orb"])
def test_keypoint_inliers_copy_vs_different_image(method):
    cache = keypoints.KeypointCache(method)
    for i in range(3):
        a, b = blobs(i), blobs(100 + i)
        copy = app_c_copy(a, 10 + i, strength=0.5)  # crop/zoom, stretch, rescale, rotation, colour, JPEG
        same = cache.inliers(("a", i), a, ("c", i), copy)
        other = cache.inliers(("a", i), a, ("b", i), b)
        assert same >= 50, (method, i, same)
        assert other <= 12, (method, i, other)
    # a flat image has no keypoints: 0, not an error
    assert keypoints.keypoint_inliers(Image.new("RGB", (64, 64), (9, 9, 9)), blobs(0), method) == 0


# ---------------------------------------------------------------------------------------------- captions

WORDS = ("red blue green small large wooden metal old new happy dog cat bird car house tree river road "
         "city night morning beach mountain flower garden window door table chair lamp book phone").split()


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 11)))) for _ in range(n)]


def test_minhash_finds_near_identical_captions_not_unrelated():
    bench = {f"b{i}": s for i, s in enumerate(sentences(200, 0))}
    index = captions.TextIndex(bench, threshold=0.7)
    near = {
        "b3": bench["b3"].upper() + "!!",  # case and punctuation
        "b7": "  " + bench["b7"].replace(" ", ",  ") + ".",  # separators
        "b11": bench["b11"] + "s",  # a plural
    }
    for key, text in near.items():
        hits = dict(index.query(text))
        assert key in hits and hits[key] >= 0.7
    for text in sentences(50, 1) + ["", "a photo of a dog"]:
        assert all(j >= 0.7 for _, j in index.query(text))  # verified exactly: never below the threshold
    unrelated = sum(len(index.query(t)) for t in sentences(50, 1))
    assert unrelated == 0


def test_minhash_matches_brute_force_jaccard():
    bench = sentences(150, 2)
    queries = [s if i % 3 else s[: max(5, len(s) - 6)] for i, s in enumerate(sentences(60, 3) + bench[:60])]
    got = {(u, k) for u, k, _ in captions.text_matches({f"q{i}": q for i, q in enumerate(queries)},
                                                        list(enumerate(bench)), threshold=0.6)}
    ref = {(f"q{i}", k) for i, q in enumerate(queries) for k, b in enumerate(bench)
           if captions.text_similarity(q, b) >= 0.6}
    assert got <= ref  # exact verification: no false positive
    assert len(got) >= 0.95 * len(ref) and len(ref) >= 60  # LSH misses (almost) nothing


def test_text_similarity_reference():
    assert captions.text_similarity("A photo of a Dog!", "a photo of a dog") == 1.0
    assert captions.text_similarity("", "x") == 0.0
    a, b = captions.shingles("abcdef"), captions.shingles("abcdxy")
    assert a == {"abcd", "bcde", "cdef"} and captions.jaccard(a, b) == 1 / 5


# ---------------------------------------------------------------------------------------------- rule

@pytest.mark.parametrize("votes,expected", [
    ({"detector": "overlap", "clip": "clean"}, "overlap"),  # a copy CLIP cannot see
    ({"detector": "clean", "clip": "overlap"}, "review"),  # same thing, not a copy: a human looks
    ({"detector": "clean", "clip": "clean", "phash": "overlap"}, "overlap"),  # near-identical file
    ({"detector": "review", "keypoints": "review"}, "overlap"),  # grey zone confirmed by geometry
    ({"detector": "review", "phash": "clean", "keypoints": "clean"}, "review"),
    ({"detector": "clean", "keypoints": "overlap"}, "review"),
    ({"detector": "clean", "clip": "review", "phash": "review"}, "clean"),
    ({"detector": "clean", "text": "overlap"}, "overlap"),  # a caption benchmark's caption copied
])
def test_detector_rule(votes, expected):
    assert rules.detector_rule(votes) == expected


# ---------------------------------------------------------------------------------------------- stage

def test_overlap_uses_detector_descriptors(ws):
    """CLIP misses a copy that the detector sees (App. C): the detector proposes the pair and decides it."""
    from _overlap_helpers import make_workspace, near_copy, unit, write_bench as write_emb_bench
    from _overlap_helpers import write_model, write_pool_shard
    from clipcurate.core import manifest as mf
    from clipcurate import overlap

    rng = np.random.default_rng(1)
    arrays = make_workspace(ws.root, shards=2, per_shard=50, benches={"cifar10": 20},
                            plants=[("cifar10", 3, 1, 7, 0.99)])  # CLIP: near-identical, but not a copy
    tag = "detector__t-000000000000"
    write_model(ws.root, tag=tag, dim=64, kind="detector")
    bvec = unit(rng, 20, 64)
    pools = [unit(rng, 50, 64) for _ in range(2)]
    pools[0][11] = near_copy(rng, bvec[5], 0.97)  # a copy the detector sees (CLIP: random)
    pools[1][7] = near_copy(rng, bvec[3], 0.10)  # the detector: not a copy
    pools[1][20] = near_copy(rng, bvec[8], 0.95)  # another copy only the detector sees, in the second shard
    write_emb_bench(ws.root, "cifar10", bvec, tag=tag, uids=list(arrays["bench_uids"]["cifar10"]))
    for i, (name, x) in enumerate(zip(arrays["shards"], pools)):
        write_pool_shard(ws.root, name, x, arrays["pool_uids"][i * 50:(i + 1) * 50], tag=tag)
    overlap.run(ws)
    pairs = mf.read("pairs", ws.path("overlap", "pairs.parquet")).to_pylist()
    by = {(p["pool_uid"], p["bench_index"]): p for p in pairs}
    copy = by[(arrays["pool_uids"][11], 5)]
    assert copy["score_detector"] == pytest.approx(0.97, abs=0.01)
    assert copy["score_clip"] is not None and copy["score_clip"] < 0.85  # CLIP's search would not have kept it
    assert copy["decision"] == "overlap" and copy["rank"] is None
    assert by[(arrays["pool_uids"][50 + 20], 8)]["score_detector"] == pytest.approx(0.95, abs=0.01)
    lookalike = by[(arrays["pool_uids"][50 + 7], 3)]
    assert lookalike["score_clip"] > 0.95 and lookalike["score_detector"] < 0.2
    assert lookalike["decision"] == "review"
    splits = {s["bench_index"]: s["split"] for s in mf.read("splits", ws.path("overlap", "splits.parquet")).to_pylist()}
    assert splits[5] == "overlap" and splits[8] == "overlap"
    assert sum(p["score_detector"] is not None and p["score_detector"] >= 0.7 for p in pairs) == 2  # no other
