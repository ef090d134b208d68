"""Calibration that does not grade its own homework: choose on one half, report on the other.

``overlap calibrate`` plants copies of benchmark images among pool images and scores every
(benchmark, pool) pair with every signal. Here those scores become figures a reader can trust:

1. **Two halves by benchmark image.** The planted sources are split at random into a *choose* half
   and a *held-apart* half; the other benchmark images (queries without a copy) are split the same
   way. Thresholds and the combined rule (:mod:`clipcurate.overlap.combined`) are chosen on the
   choose half's pairs only; precision and recall are measured on the held-apart half's pairs
   only, each with a 95 % Clopper-Pearson interval. No figure is measured on the copies that chose.
2. **Real copies among the distractors are no false positives.** The distractors come from the
   pool, which may itself hold copies of benchmark images. A distractor pair that is a *strong
   candidate* by a criterion fixed in advance — PDQ distance ≤ 31 (Meta's own match threshold for
   PDQ), or a guarded keypoint fit aligning with NCC ≥ 0.9 on ≥ 20 inliers — is left out of both
   the choice and the precision estimate, and reported apart (``suspected_real_copies``).
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


def strong_candidates(values: dict[str, np.ndarray], truth: np.ndarray) -> np.ndarray:
    """Pairs that are not planted copies but look like real ones by the fixed criterion (module
    docstring, 2); booleans like ``truth``."""
    strong = np.zeros(truth.shape, bool)
    if "pdq" in values:
        strong |= np.nan_to_num(values["pdq"], nan=256) <= PDQ_STRONG
    if "kp_ncc" in values and "keypoints" in values:
        strong |= (np.nan_to_num(values["kp_ncc"], nan=-1) >= NCC_STRONG) & \
                  (np.nan_to_num(values["keypoints"], nan=0) >= INLIERS_STRONG)
    return strong & ~truth


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
                      target: float, extra: tuple | None = None, never_decide: frozenset = frozenset()) -> dict:
    """Choose on the pairs whose query is not ``held``, report on those whose query is.

    ``values``: signal → flat array over pairs; ``truth``: planted copy or not; ``query``: each
    pair's benchmark row (the group of :func:`clipcurate.overlap.combined.fit`); ``held``: per
    query row. ``extra``: (features, truth, groups) of more labelled pairs for the choice (human
    decisions). Strong candidates among distractor pairs are left out of both halves.
    ``never_decide``: signals reported but kept out of the rule (a random-init CLIP is no copy
    detector, whatever a sample of copies says)."""
    strong = strong_candidates(values, truth)
    keep = ~strong
    feats = features(values)
    in_held = held[query]
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
            "suspected_real_copies": int(strong.sum())}


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
