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
from clipcurate.overlap.hashes import hamming_matrix, image_hashes  # noqa: E402
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
    s["kp_inliers"], s["kp_ncc"], s["kp_votes"] = inl, ncc, votes
    t["keypoint verification"] = time.time() - t0
    truth = ds.truth
    log(f"keypoints: {int(cand.sum())} candidate pairs, {int((cand & truth).sum())}/{int(truth.sum())} copies among them")
    return s, t


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
        np.savez_compressed(args.save_scores, **scores)
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
    # kp_votes only proposes keypoint candidates (the stage has no such column): not a decision signal
    feats = {k: comb.as_feature(k, v) for k, v in scores.items() if k != "kp_votes"}
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
        print("\nrecall on held-apart copies per edit kind (combined | pdq_tolerant | phash):\n")
        print("| edit | copies | combined | pdq_tolerant | phash |")
        print("| --- | --- | --- | --- | --- |")
        t_h, k_h = truth[held_rows], pool_kind[held_rows]
        for k in ["app_c", *realphoto_devset.EDITS]:
            sel = t_h & (k_h == k)
            cells = []
            for name in ("combined", "pdq_tolerant", "phash"):
                m = comb.measure(rows[name][1][sel], np.ones(int(sel.sum()), bool))
                res[name]["per_kind"][k] = m["recall"]
                cells.append(comb.fmt(m["recall"], m["recall_ci"]))
            print(f"| {k} | {int(sel.sum())} | " + " | ".join(cells) + " |")
        out["targets"][str(target)] = res
    print("\n# seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    return out


if __name__ == "__main__":
    main()
