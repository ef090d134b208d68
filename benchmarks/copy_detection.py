"""Copy detection on real photographs: each signal alone and the combined rule, on held-apart copies.

The set is :mod:`realphoto_devset` (tiles of the photographs that ship inside scikit-learn and
matplotlib, with an App. C copy and two everyday edits of every benchmark tile planted in a pool
of neighbouring tiles). Every (benchmark, pool) pair is scored by every signal:

- ``phash`` / ``dhash``: imagehash, 64-bit Hamming distance — **the honest baseline is pHash alone**;
- ``pdq``: PDQ (``pdqhash``), 256-bit Hamming distance of the images as they are;
- ``pdq_tolerant``: PDQ with mirror and border-trim variants (``clipcurate.overlap.verify``);
- ``kp_inliers`` / ``kp_ncc``: SIFT + guarded affine RANSAC, then alignment by NCC, on the
  candidate pairs only (the ``--kp-topk`` nearest pool images of each benchmark image by PDQ and by
  keypoint votes — ``--no-votes``: by PDQ only); other pairs: 0 inliers, no NCC. The votes only
  propose candidates; they are not a decision signal;
- ``detector`` (``--detector``): the tiny App. C detector trained on the pool (CPU, minutes).

The combined rule is also measured with **query expansion** as the overlap stage runs it
(``clipcurate.overlap.expand``): every pool image the rule took for a held-apart tile queries that
tile's other keypoint candidates with the same rule, pool image against pool image, until nothing
changes (each tile has three planted copies); a pool image joins only the tile the rule scores it
highest against.

Thresholds and the combined rule are **chosen on the choose half** of the benchmark images and
every figure is measured on the **held-apart half** (those benchmark images' pairs only), with 95 %
Clopper-Pearson intervals: precision and recall at P ≥ 0.95 and ≥ 0.99, per edit kind, and the
ratio of recall to pHash's at the same target.

    python benchmarks/copy_detection.py                     # ~1-2 min on 2 cores
    python benchmarks/copy_detection.py --detector          # + the tiny detector (minutes more)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import realphoto_devset  # noqa: E402
from clipcurate.overlap import combined as comb  # noqa: E402
from clipcurate.overlap.hashes import hamming, hamming_matrix, image_hashes  # noqa: E402
from clipcurate.overlap.verify import PairVerifier, features, grey_frame, keypoint_votes, pack, pdq_distance_matrix, \
    pdq_variants  # noqa: E402

log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731


def score_all(ds, kp_topk: int, votes_on: bool = True) -> tuple[dict, dict]:
    """Every signal on every (benchmark, pool) pair, as [nb, np] matrices; and seconds per signal."""
    s, t = {}, {}
    t0 = time.time()
    hb = np.array([image_hashes(im) for im in ds.bench])
    hp = np.array([image_hashes(im) for im in ds.pool])
    s["phash"], s["dhash"] = hamming_matrix(hb[:, 0], hp[:, 0]), hamming_matrix(hb[:, 1], hp[:, 1])
    t["phash+dhash"] = time.time() - t0
    t0 = time.time()
    vb = pack(np.stack([pdq_variants(im)[0] for im in ds.bench]))
    vp = pack(np.stack([pdq_variants(im) for im in ds.pool]))
    s["pdq"] = pdq_distance_matrix(vb, vp[:, :1])
    s["pdq_tolerant"] = pdq_distance_matrix(vb, vp)
    t["pdq (4 variants)"] = time.time() - t0
    t0 = time.time()
    votes = keypoint_votes([features(grey_frame(im)) for im in ds.bench], [features(grey_frame(im)) for im in ds.pool]) \
        if votes_on else np.zeros(s["pdq"].shape, np.int32)
    t["keypoint votes"] = time.time() - t0
    t0 = time.time()
    cand = np.zeros(votes.shape, bool)
    rows = np.arange(len(ds.bench))[:, None]
    cand[rows, np.argsort(s["pdq_tolerant"], axis=1, kind="stable")[:, :kp_topk]] = True
    if votes_on:
        cand[rows, np.argsort(-votes, axis=1, kind="stable")[:, :kp_topk]] = True
    inl, ncc = np.zeros(votes.shape, np.float64), np.full(votes.shape, np.nan)
    pv = PairVerifier()
    for i, j in zip(*np.nonzero(cand)):
        n, c = pv.verify(("b", i), ds.bench[i], ("p", j), ds.pool[j])
        inl[i, j], ncc[i, j] = n, (np.nan if c is None else c)
    s["kp_inliers"], s["kp_ncc"], s["kp_votes"], s["kp_candidates"] = inl, ncc, votes, cand
    t["keypoint verification"] = time.time() - t0
    truth = ds.truth
    log(f"keypoints: {int(cand.sum())} candidate pairs, {int((cand & truth).sum())}/{int(truth.sum())} copies among them")
    return s, t


def pool_pair_scores(ds, scores: dict, pairs: list[tuple[int, int]], names, verifier: PairVerifier) -> dict:
    """The rule's signals on (pool image a, pool image b) pairs, a in the benchmark image's role."""
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    hp = scores["_pool_hashes"]
    vp = scores["_pool_pdq"]
    out = {"phash": hamming(hp[a, 0], hp[b, 0]).astype(np.float64),
           "dhash": hamming(hp[a, 1], hp[b, 1]).astype(np.float64)}
    out["pdq"] = np.array([pdq_distance_matrix(vp[i][:1], vp[j][None, :1])[0, 0] for i, j in pairs], np.float64)
    out["pdq_tolerant"] = np.array([pdq_distance_matrix(vp[i][:1], vp[j][None])[0, 0] for i, j in pairs], np.float64)
    if {"kp_inliers", "kp_ncc"} & set(names):
        inl, ncc = [], []
        for i, j in pairs:
            n, c = verifier.verify(("p", i), ds.pool[i], ("p", j), ds.pool[j])
            inl.append(n)
            ncc.append(np.nan if c is None else c)
        out["kp_inliers"], out["kp_ncc"] = np.array(inl, np.float64), np.array(ncc)
    return {k: comb.as_feature(k, out[k]) for k in names}


def expand(ds, scores: dict, rule: comb.Rule, held_rows: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Query expansion as the overlap stage runs it (``clipcurate.overlap.expand``), on the held-apart
    tiles: each pool image the rule took for a tile queries the tile's other candidates (its keypoint
    candidates: the pairs the stage would have proposed) with the same rule, until nothing changes."""
    if rule.threshold is None:
        return pred
    if "_pool_hashes" not in scores:
        scores["_pool_hashes"] = np.array([image_hashes(im) for im in ds.pool], dtype=np.int64)
        scores["_pool_pdq"] = pack(np.stack([pdq_variants(im) for im in ds.pool]))
    names = list(rule.weights)
    pred = pred.copy()
    tiles = np.flatnonzero(held_rows)
    # a pool image joins only the tile the rule scores it highest against (a copy copies one image)
    z = rule.score({k: comb.as_feature(k, scores[k]) for k in names})
    cand = scores["kp_candidates"][held_rows] & (z[held_rows] >= z.max(axis=0)[None, :])
    verifier, taken = PairVerifier(), {}
    queries = {t: list(np.flatnonzero(pred[t])) for t in range(len(tiles)) if pred[t].any()}
    while queries:
        todo = [(t, q, k) for t, qs in queries.items() for q in qs for k in np.flatnonzero(cand[t] & ~pred[t])
                if k != q and (q, k) not in taken]
        pairs = sorted({(int(q), int(k)) for _, q, k in todo})
        if pairs:
            took = rule.predict(pool_pair_scores(ds, scores, pairs, names, verifier))
            taken.update(zip(pairs, (bool(x) for x in took)))
        queries = {}
        for t, q, k in todo:
            if not pred[t, k] and taken.get((int(q), int(k))):
                pred[t, k] = True
                queries.setdefault(t, []).append(k)
    return pred


def detector_scores(ds, steps: int) -> np.ndarray:
    from clipcurate import detector
    from clipcurate.detector.net import make_preprocess

    cfg = {"preset": "tiny", "steps": steps, "device": "cpu", "seed": 0}
    res = detector.fit(detector.ImageList(list(ds.pool)), cfg)
    full = detector.resolve_config(cfg)
    desc = detector.Descriptor(res.model, make_preprocess(int(full["image_size"])), "bench", int(full["dim"]), {})
    return desc.encode(ds.bench, device="cpu") @ desc.encode(ds.pool, device="cpu").T


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kp-topk", type=int, default=6)
    ap.add_argument("--no-votes", action="store_true",
                    help="keypoint candidates from PDQ only, as in the overlap stage without a keypoint search")
    ap.add_argument("--detector", action="store_true", help="also train and score the tiny App. C detector")
    ap.add_argument("--detector-steps", type=int, default=400)
    ap.add_argument("--json", default="")
    ap.add_argument("--save-scores", default="", help="write every score matrix here (.npz)")
    ap.add_argument("--from-scores", default="", help="skip the scoring: analyse a --save-scores file")
    args = ap.parse_args(argv)
    t0 = time.time()
    ds = realphoto_devset.build(args.seed)
    log(f"set: {len(ds.bench)} benchmark tiles, {len(ds.pool)} pool images, {int((ds.copy_of >= 0).sum())} copies "
        f"in {time.time() - t0:.1f}s")
    if args.from_scores:
        with np.load(args.from_scores) as z:
            scores, times = {k: z[k] for k in z.files}, {}
    else:
        scores, times = score_all(ds, args.kp_topk, not args.no_votes)
    if args.save_scores:
        np.savez_compressed(args.save_scores, **{k: v for k, v in scores.items() if not k.startswith("_")})
    if args.detector:
        t0 = time.time()
        scores["detector"] = detector_scores(ds, args.detector_steps)
        times["detector (train + encode)"] = time.time() - t0
    out = report(ds, scores, times)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))
    return out


def report(ds, scores: dict, times: dict) -> dict:
    truth = ds.truth
    kind = np.array(ds.kind)
    pool_kind = np.broadcast_to(kind[None, :], truth.shape)
    choose_rows, held_rows = ~ds.held_apart, ds.held_apart
    # kp_votes / kp_candidates only propose keypoint candidates (the stage has no such column)
    feats = {k: comb.as_feature(k, v) for k, v in scores.items()
             if k not in ("kp_votes", "kp_candidates") and not k.startswith("_")}
    out = {"n_bench": len(ds.bench), "n_pool": len(ds.pool), "held_apart_copies": int(truth[held_rows].sum()),
           "times_s": times, "targets": {}}
    print(f"# copy detection on real photographs: {len(ds.bench)} benchmark tiles × {len(ds.pool)} pool images; "
          f"chosen on {int(choose_rows.sum())} benchmark tiles, measured on the {int(held_rows.sum())} held apart "
          f"({int(truth[held_rows].sum())} planted copies, {int((~truth[held_rows]).sum())} other pairs)")
    for target in (0.95, 0.99):
        rows = {}
        for name, f in feats.items():
            rule = comb.fit_single(name, f[choose_rows], truth[choose_rows], target)
            rows[name] = (rule, rule.predict({name: f[held_rows]}))
        rule = comb.fit(
            {k: v[choose_rows] for k, v in feats.items()}, truth[choose_rows], target)
        rows["combined"] = (rule, rule.predict({k: v[held_rows] for k, v in feats.items()}))
        if "kp_candidates" in scores:
            rows["combined + query expansion"] = (rule, expand(ds, scores, rule, held_rows, rows["combined"][1]))
        base = comb.measure(rows["phash"][1], truth[held_rows])["recall"] or 1e-9
        print(f"\n## target precision ≥ {target} (chosen on the choose half)\n")
        print("| signal | rule | precision [95% CI] | recall [95% CI] | TP | FP | FN | recall / pHash |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        res = {}
        for name, (rule, pred) in rows.items():
            m = comb.measure(pred, truth[held_rows])
            res[name] = {"rule": rule.describe(), **m, "per_kind": {}}
            print(f"| {name} | {rule.describe()} | {comb.fmt(m['precision'], m['precision_ci'])} | "
                  f"{comb.fmt(m['recall'], m['recall_ci'])} | {m['tp']} | {m['fp']} | {m['fn']} | "
                  f"{(m['recall'] or 0) / base:.2f} |")
        names = [n for n in ("combined", "combined + query expansion", "pdq_tolerant", "phash") if n in rows]
        print(f"\nrecall on held-apart copies per edit kind ({' | '.join(names)}):\n")
        print("| edit | copies | " + " | ".join(names) + " |")
        print("|" + " --- |" * (2 + len(names)))
        t_h, k_h = truth[held_rows], pool_kind[held_rows]
        for k in ["app_c", *realphoto_devset.EDITS]:
            sel = t_h & (k_h == k)
            cells = []
            for name in names:
                m = comb.measure(rows[name][1][sel], np.ones(int(sel.sum()), bool))
                res[name]["per_kind"][k] = m["recall"]
                cells.append(comb.fmt(m["recall"], m["recall_ci"]))
            print(f"| {k} | {int(sel.sum())} | " + " | ".join(cells) + " |")
        out["targets"][str(target)] = res
    print("\n# seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    return out


if __name__ == "__main__":
    main()
