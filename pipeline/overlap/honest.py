"""Calibration that does not grade its own homework: choose on one half, report on the other.

``overlap calibrate`` plants copies of benchmark images among pool images and scores every
(benchmark, pool) pair with every signal. Here those scores become figures a reader can trust:

1. **Two halves by benchmark image.** The planted sources are split at random into a *choose* half
   and a *held-apart* half; the other benchmark images (queries without a copy) are split the same
   way. Thresholds and the combined rule (:mod:`clipcurate.overlap.combined`) are chosen on the
   choose half's pairs only; precision and recall are measured on the held-apart half's pairs
   only, each with a 95 % Clopper-Pearson interval. No figure is measured on the copies that chose.
2. **Real copies among the distractors are no false positives.** The distractors come from the
   pool, which may itself hold copies of benchmark images — in a contaminated pool, many: then
   most "false positives" at the thresholds that matter are real copies, and every signal looks
   useless. A distractor pair that is a *strong candidate* by a criterion fixed in advance is left
   out of both the choice and the precision estimate, and reported apart
   (``suspected_real_copies``):

   - PDQ distance ≤ 31 (Meta's own match threshold for PDQ), or a guarded keypoint fit aligning
     with NCC ≥ 0.9 on ≥ 20 inliers; or
   - **independent families agree on the distractor's one source**: a real copy is a copy of one
     benchmark image, its source, and looks like a copy to signals that fail in unrelated ways.
     So for each distractor only its best-matching query is considered (the highest summed rank
     over the signal families — hashes: the best of PDQ, pHash, dHash; the copy detector;
     alignment, ``kp_ncc``; a trained CLIP), and that one pair is a suspected real copy when at
     least two families score it at least as copy-like as the lower quartile of the *choose
     half's* planted copies (the held-apart copies do not shape the criterion that filters their
     negatives); and
   - **a benchmark image with a suspected real copy loses all its distractor pairs**: copies
     recur (a popular image is posted many times, each copy edited its own way), so its other
     real copies may sit among the distractors, too far from it for the criteria above but close
     enough to pin a threshold. Its planted copy still counts as a copy, and its pairs with the
     other images' planted copies as negatives.

   The price: a look-alike that two families mistake for a copy of its best match is excluded, not
   counted as a false positive, and so are the other distractor pairs of its benchmark image. The
   counts are reported (``suspected_real_copies``: pairs, ``suspected_images``: benchmark images,
   ``excluded_pairs``: all the pairs left out), and on a pool without real copies
   (``benchmarks/copy_detection.py``'s development set) that count is the price, measured.
3. **Human decisions as labels** (:func:`decision_pairs`): when enough reviewed pairs exist, they
   join the choose half as labelled pairs (duplicate → copy, not_duplicate → not), and the report
   says how the held-apart figures moved.
"""

from __future__ import annotations

import numpy as np

from clipcurate.overlap import combined as comb
from clipcurate.overlap.rules import SIGNALS

PDQ_STRONG = 31  # Meta's PDQ match threshold (of 256 bits)
NCC_STRONG, INLIERS_STRONG = 0.9, 20


def features(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Signal values (named as in :data:`clipcurate.overlap.rules.SIGNALS`) → combined-rule features."""
    return {k: comb.as_feature(k, v) for k, v in values.items()}


def row_features(rows: list[dict], names) -> dict[str, np.ndarray]:
    """The same features from ``pairs`` rows (their signal columns; None = not computed)."""
    out = {}
    for k in names:
        col = SIGNALS[k].column
        out[k] = comb.as_feature(k, [np.nan if r.get(col) is None else float(r[col]) for r in rows])
    return out


# signal families that fail in unrelated ways (module docstring, 2)
FAMILIES = {"hashes": ("pdq", "phash", "dhash"), "detector": ("detector",), "alignment": ("kp_ncc",),
            "clip": ("clip",)}
AGREE, QUANTILE = 2, 0.25  # families that must agree; the planted copies' quantile they must reach


def family_features(feats: dict[str, np.ndarray], never: frozenset = frozenset()) -> dict[str, np.ndarray]:
    """family → per-pair feature (the most copy-like of its signals' features, :func:`features`);
    ``never``: signals left out."""
    out = {}
    for fam, names in FAMILIES.items():
        have = [feats[k] for k in names if k in feats and k not in never]
        if have:
            out[fam] = np.max(have, axis=0)
    return out


def suspected_sources(feats: dict[str, np.ndarray], pool: np.ndarray, reference: np.ndarray,
                      never: frozenset = frozenset()) -> np.ndarray:
    """Booleans over pairs: the pair of each distractor (``pool``: each pair's pool column) with its
    best-matching query, when at least :data:`AGREE` families score it at least at the
    :data:`QUANTILE` of the ``reference`` pairs (planted copies)."""
    from scipy.stats import rankdata  # scipy.stats: 0.9 s to import; only calibration pays it

    fam = family_features(feats, never)
    out = np.zeros(pool.shape, bool)
    if not fam or not reference.any():
        return out
    votes = sum((f >= np.quantile(f[reference], QUANTILE)).astype(np.int32) for f in fam.values())
    evidence = sum(rankdata(f) / len(f) for f in fam.values())
    order = np.lexsort((-evidence, pool))  # by pool column, best evidence first
    first = order[np.r_[True, pool[order][1:] != pool[order][:-1]]]
    out[first] = votes[first] >= AGREE
    return out


def strong_candidates(values: dict[str, np.ndarray], truth: np.ndarray, reference: np.ndarray | None = None,
                      pool: np.ndarray | None = None, never: frozenset = frozenset(),
                      feats: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Pairs that are not planted copies but look like real ones by the fixed criteria (module
    docstring, 2); booleans like ``truth``. ``reference`` (the planted copies that set the level)
    and ``pool`` (each pair's pool column): without them the family criterion is not applied.
    ``feats``: :func:`features` of ``values`` when the caller has them already."""
    strong = np.zeros(truth.shape, bool)
    if "pdq" in values:
        strong |= np.nan_to_num(values["pdq"], nan=256) <= PDQ_STRONG
    if "kp_ncc" in values and "keypoints" in values:
        strong |= (np.nan_to_num(values["kp_ncc"], nan=-1) >= NCC_STRONG) & \
                  (np.nan_to_num(values["keypoints"], nan=0) >= INLIERS_STRONG)
    if reference is not None and pool is not None:
        strong |= suspected_sources(features(values) if feats is None else feats, pool, reference, never)
    return strong & ~truth


def suspected_images(strong: np.ndarray, truth: np.ndarray, query: np.ndarray, pool: np.ndarray
                     ) -> tuple[np.ndarray, int]:
    """(every distractor pair of the benchmark images with a suspected real copy, how many images):
    copies recur, so such an image's other real copies may be among the distractors, too far from
    it for :func:`strong_candidates` — none of its distractor pairs is a trusted negative. A
    distractor is a pool column with no planted copy."""
    planted = np.zeros(int(pool.max()) + 1 if len(pool) else 0, bool)
    planted[np.unique(pool[truth])] = True
    distractor = ~planted[pool]
    images = np.unique(query[strong & distractor])
    return np.isin(query, images) & distractor & ~truth, len(images)


def _report_rule(rule: comb.Rule, feats: dict, truth: np.ndarray) -> dict:
    m = comb.measure(rule.predict(feats), truth)
    return {"rule": rule.describe(), **{k: _r(v) for k, v in m.items()}}


def _r(v):
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, tuple):
        return [round(x, 6) for x in v]
    return v


def choose_and_report(values: dict[str, np.ndarray], truth: np.ndarray, query: np.ndarray, held: np.ndarray,
                      target: float, extra: tuple | None = None, never_decide: frozenset = frozenset(),
                      pool: np.ndarray | None = None) -> dict:
    """Choose on the pairs whose query is not ``held``, report on those whose query is.

    ``values``: signal → flat array over pairs; ``truth``: planted copy or not; ``query``: each
    pair's benchmark row (the group of :func:`clipcurate.overlap.combined.fit`); ``held``: per
    query row. ``extra``: (features, truth, groups) of more labelled pairs for the choice (human
    decisions). Strong candidates among distractor pairs are left out of both halves.
    ``never_decide``: signals reported but kept out of the rule (a random-init CLIP is no copy
    detector, whatever a sample of copies says)."""
    in_held = held[query]
    feats = features(values)
    strong = strong_candidates(values, truth, truth & ~in_held, pool, never_decide, feats)
    suspected, n_images = strong, 0
    if pool is not None and truth.any():
        more, n_images = suspected_images(suspected, truth, query, pool)
        strong = suspected | more
    keep = ~strong
    ch, ho = keep & ~in_held, keep & in_held
    f_ch = {k: v[ch] for k, v in feats.items()}
    t_ch, g_ch = truth[ch], query[ch]
    if extra is not None:
        f_x, t_x, g_x = extra
        f_ch = {k: np.r_[v, f_x[k]] for k, v in f_ch.items()}
        t_ch, g_ch = np.r_[t_ch, t_x], np.r_[g_ch, g_x]
    f_ho = {k: v[ho] for k, v in feats.items()}
    signals = {}
    for k in feats:
        rule = comb.fit_single(k, f_ch[k], t_ch, target)
        signals[k] = {**_report_rule(rule, {k: f_ho[k]}, truth[ho]), "decisive": rule.threshold is not None,
                      "threshold": _native_threshold(k, rule.threshold)}
    rule = comb.fit({k: v for k, v in f_ch.items() if k not in never_decide}, t_ch, target, groups=g_ch)
    return {"rule": rule, "signals": signals, "combined": _report_rule(rule, f_ho, truth[ho]),
            "held_apart": {"copies": int(truth[ho].sum()), "pairs": int(ho.sum())},
            "chosen_on": {"copies": int(t_ch.sum()), "pairs": int(len(t_ch))},
            "suspected_real_copies": int(suspected.sum()), "suspected_images": n_images,
            "excluded_pairs": int(strong.sum()), "suspected": suspected, "strong": strong}


def _native_threshold(name: str, t: float | None) -> float | None:
    """A single-signal feature threshold in the signal's own units (distance bits, inliers, cosine)."""
    if t is None:
        return None
    if name in comb.DISTANCE_BITS:
        return float(round((1 - t) * comb.DISTANCE_BITS[name]))
    if name == "keypoints":
        return float(round(np.expm1(t)))
    return float(t)


def decision_pairs(pairs: list[dict], verdicts: dict[str, dict], names, min_decisions: int) -> tuple | None:
    """(features, truth, groups) of the reviewed ``pairs`` rows — human verdicts only (automatic
    ``auto-*`` sources are no labels) — or None when fewer than ``min_decisions`` exist or one
    verdict is missing."""
    rows, y, g = [], [], []
    for r in pairs:
        v = verdicts.get(r["pair_id"])
        if not v or "human" not in str(v.get("source", "human")).split("+"):
            continue
        rows.append(r)
        y.append(v["verdict"] == "duplicate")
        g.append(f"decision:{r['benchmark']}:{r['bench_index']}")
    if len(rows) < min_decisions or all(y) or not any(y):
        return None
    _, groups = np.unique(np.array(g), return_inverse=True)
    return row_features(rows, names), np.array(y, bool), groups + 10_000_000
