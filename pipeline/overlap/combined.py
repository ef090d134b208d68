"""One decision rule over all copy signals, chosen on labelled pairs, never worse than its best part.

Each signal is first turned into a *feature* where higher means "more like a copy"
(:func:`as_feature`: a Hamming distance d of B bits becomes 1 - d/B, inliers become log(1 + n), a
signal not computed for a pair gets its worst value). Then, for a target precision:

1. **single rules**: for each signal alone, the threshold with the best recall among those whose
   precision on the labelled pairs reaches the target with half the error budget in reserve
   (:func:`fit_single`, :func:`_best_threshold`). A signal that reaches
   the target at no threshold is **not decisive**: it may send pairs to review, never decide
   overlap;
2. **a max rule** over the decisive signals (:func:`fit_max`): each signal's feature is mapped to
   the precision of the pairs at that value (isotonic regression of "is a copy" on the feature,
   ``scipy.optimize.isotonic_regression``: a non-decreasing step function), and the pair's score
   is the largest of these — a monotone OR: any one signal sure enough decides, whichever it is;
3. **a logistic rule** over the decisive signals (:func:`fit_logistic`: weights kept
   non-negative, so the rule is monotone — more evidence never lowers the score; fitted with
   scipy's L-BFGS-B), thresholded the same way;
4. the rule kept is the one whose recall at the target is best **out of fold**: the labelled
   pairs are split in two by benchmark image, each candidate is chosen on one half and measured on
   the other, both ways (a candidate whose out-of-fold precision is significantly below the target
   — the upper end of its 95 % interval under it — is out). So the combination replaces the best single signal only when it wins on
   pairs it was not fitted to; the kept rule is then refitted on all the labelled pairs.

Figures (:func:`measure`) carry 95 % Clopper-Pearson intervals (``scipy.stats.binomtest``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# name → (bits of a Hamming distance, or None for a score where higher is better already)
DISTANCE_BITS = {"phash": 64, "dhash": 64, "pdq": 256, "pdq_tolerant": 256}
WORST = {"kp_inliers": 0.0, "kp_ncc": -1.0, "detector": -1.0, "clip": -1.0, "text": 0.0}


def as_feature(name: str, values) -> np.ndarray:
    """Signal values → a feature where higher means more copy-like; NaN (not computed) → worst."""
    v = np.asarray(values, np.float64)
    if name in DISTANCE_BITS:
        f = 1.0 - v / DISTANCE_BITS[name]
        return np.where(np.isnan(f), 0.0, f)
    if name in ("kp_inliers", "keypoints"):
        return np.log1p(np.where(np.isnan(v), 0.0, np.maximum(v, 0.0)))
    return np.where(np.isnan(v), WORST.get(name, -1.0), v)


def _best_threshold(score: np.ndarray, truth: np.ndarray, target: float) -> tuple[float | None, float]:
    """(threshold, recall): the lowest cut ``score >= t`` whose precision on these pairs reaches
    ``1 - (1 - target) / 2`` — half the error budget is kept in reserve, because a cut placed
    exactly at the target on the pairs that chose it falls below it on other pairs about half the
    time — placed halfway to the next lower score (only cuts between distinct values);
    (None, 0) when no cut does."""
    s, t = np.asarray(score, np.float64).ravel(), np.asarray(truth, bool).ravel()
    if not t.any():
        return None, 0.0
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    tp, n = np.cumsum(t), np.arange(1, len(t) + 1)
    last = np.r_[s[1:] != s[:-1], True]
    ok = last & (tp / n >= 1 - (1 - target) / 2)
    if not ok.any():
        return None, 0.0
    k = int(np.flatnonzero(ok)[-1])
    cut = float(s[k]) if k + 1 == len(s) else float((s[k] + s[k + 1]) / 2)
    return cut, float(tp[k] / t.sum())


@dataclasses.dataclass
class Rule:
    """``score(features) >= threshold`` → overlap; ``threshold`` None: the rule decides nothing."""

    kind: str  # "single", "max" or "logistic"
    weights: dict[str, float]  # feature name → weight (single / max: 1.0 each)
    bias: float
    threshold: float | None
    target: float
    steps: dict[str, list[list[float]]] = dataclasses.field(default_factory=dict)  # max: name → [xs, ys]

    def score(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        if self.kind == "max":
            return np.max([_step(np.asarray(feats[k], np.float64), *self.steps[k]) for k in self.weights], axis=0)
        z = self.bias + sum(w * np.asarray(feats[k], np.float64) for k, w in self.weights.items())
        return np.asarray(z, np.float64)

    def predict(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        z = self.score(feats)
        return np.zeros(z.shape, bool) if self.threshold is None else z >= self.threshold

    def describe(self) -> str:
        if self.threshold is None:
            return f"{next(iter(self.weights), 'none')}: reaches precision {self.target} at no threshold"
        if self.kind == "single":
            (name,) = self.weights
            if name in DISTANCE_BITS:
                return f"{name} ≤ {round((1 - self.threshold) * DISTANCE_BITS[name])}"
            if name in ("kp_inliers", "keypoints"):
                return f"{name} ≥ {round(math.expm1(self.threshold))}"
            return f"{name} ≥ {self.threshold:.3f}"
        if self.kind == "max":
            return f"max(precision-calibrated {', '.join(self.weights)}) ≥ {self.threshold:.3f}"
        terms = " + ".join(f"{w:.2f}·{k}" for k, w in self.weights.items() if w > 1e-6)
        return f"logistic({terms}) ≥ {self.threshold:.3f}"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Rule":
        return cls(d["kind"], dict(d["weights"]), float(d["bias"]), d["threshold"], float(d["target"]),
                   {k: [list(v[0]), list(v[1])] for k, v in (d.get("steps") or {}).items()})


def _step(x: np.ndarray, xs: list[float], ys: list[float]) -> np.ndarray:
    """The non-decreasing step function through (xs, ys): the y of the last xs at or below x
    (below the first xs: 0)."""
    i = np.searchsorted(np.asarray(xs), x, side="right") - 1
    return np.where(i >= 0, np.asarray(ys)[np.maximum(i, 0)], 0.0)


def fit_max(feats: dict[str, np.ndarray], truth: np.ndarray, target: float) -> Rule:
    """Each feature → isotonic precision (a step function kept at its block edges); score = max."""
    from scipy.optimize import isotonic_regression  # scipy.optimize: 0.3 s; only fitting a rule pays it

    y = np.asarray(truth, np.float64).ravel()
    steps = {}
    for k, v in feats.items():
        x = np.asarray(v, np.float64).ravel()
        xs, inv = np.unique(x, return_inverse=True)
        cnt = np.bincount(inv).astype(np.float64)
        mean = np.bincount(inv, weights=y) / cnt
        fitted = isotonic_regression(mean, weights=cnt, increasing=True).x
        edge = np.r_[True, fitted[1:] != fitted[:-1]]  # keep where the step changes
        steps[k] = [xs[edge].tolist(), fitted[edge].tolist()]
    rule = Rule("max", {k: 1.0 for k in feats}, 0.0, None, target, steps)
    rule.threshold, _ = _best_threshold(rule.score(feats), truth, target)
    return rule


def fit_single(name: str, feature: np.ndarray, truth: np.ndarray, target: float) -> Rule:
    t, _ = _best_threshold(feature, truth, target)
    return Rule("single", {name: 1.0}, 0.0, t, target)


def fit_logistic(feats: dict[str, np.ndarray], truth: np.ndarray, target: float, l2: float = 1e-3) -> Rule:
    """Non-negative-weight logistic regression on the features (standardised inside), then the
    threshold on its logit for the target precision."""
    from scipy.optimize import minimize  # scipy.optimize: 0.3 s to import; only fitting a rule pays it

    names = sorted(feats)
    x = np.stack([np.asarray(feats[k], np.float64).ravel() for k in names], 1)
    y = np.asarray(truth, np.float64).ravel()
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = (x - mu) / sd
    pos_w = 0.5 / max(y.mean(), 1e-9)  # balance the classes: copies are rare among pairs
    sw = np.where(y > 0, pos_w, 0.5 / max(1 - y.mean(), 1e-9))

    def loss(p):
        m = z @ p[:-1] + p[-1]
        lp = np.logaddexp(0, -m)  # -log sigmoid(m)
        ln = np.logaddexp(0, m)  # -log (1 - sigmoid(m))
        g = -(y * (1 - 1 / (1 + np.exp(-m))) - (1 - y) / (1 + np.exp(-m)))
        val = (sw * (y * lp + (1 - y) * ln)).mean() + l2 * (p[:-1] ** 2).sum()
        grad = np.r_[(z * (sw * g)[:, None]).mean(0) + 2 * l2 * p[:-1], (sw * g).mean()]
        return val, grad

    bounds = [(0, None)] * len(names) + [(None, None)]
    p = minimize(loss, np.r_[np.ones(len(names)), 0.0], jac=True, method="L-BFGS-B", bounds=bounds).x
    w = {k: float(p[i] / sd[i]) for i, k in enumerate(names)}
    b = float(p[-1] - sum(p[i] * mu[i] / sd[i] for i in range(len(names))))
    rule = Rule("logistic", w, b, None, target)
    rule.threshold, _ = _best_threshold(rule.score(feats), truth, target)
    return rule


def never_alone(rule: Rule, feats: dict[str, np.ndarray], names) -> list[str]:
    """The signals among ``names`` that would decide overlap by themselves under ``rule``: at the
    best value seen, with every other signal at its worst seen value, the score reaches the threshold."""
    if rule.threshold is None:
        return []
    lo = {k: np.array([float(np.min(v))]) for k, v in feats.items() if k in rule.weights}
    out = []
    for k in names:
        if k in rule.weights and rule.weights[k] > 0:
            probe = dict(lo, **{k: np.array([float(np.max(feats[k]))])})
            if bool(rule.predict(probe)[0]):
                out.append(k)
    return out


def fit_logistic_all(feats: dict[str, np.ndarray], truth: np.ndarray, target: float,
                     decisive: set[str]) -> Rule | None:
    """The logistic rule over every signal, decisive or not: a signal too weak to reach the target
    alone still adds evidence (a hash distance that is merely small makes a borderline detector
    score more convincing). But such a signal must never decide by itself: after the fit, each
    non-decisive signal is probed at its best value with the others at their worst
    (:func:`never_alone`); one that would decide alone is dropped and the rule refitted."""
    names = set(feats)
    while len(names) >= 2:
        rule = fit_logistic({k: feats[k] for k in sorted(names)}, truth, target)
        alone = never_alone(rule, feats, sorted(names - decisive))
        if not alone:
            return rule
        names -= set(alone)
    return None


def _candidates(feats: dict[str, np.ndarray], truth: np.ndarray, target: float) -> dict[str, Rule]:
    singles = {k: fit_single(k, v, truth, target) for k, v in feats.items()}
    decisive = {k: feats[k] for k, r in singles.items() if r.threshold is not None}
    out = {k: r for k, r in singles.items() if r.threshold is not None}
    if len(decisive) >= 2:
        out["max"] = fit_max(decisive, truth, target)
        out["logistic"] = fit_logistic(decisive, truth, target)
    if decisive and len(feats) > len(decisive):
        rule = fit_logistic_all(feats, truth, target, set(decisive))
        if rule is not None and rule.threshold is not None:
            out["logistic-all"] = rule
    return out


def fit(feats: dict[str, np.ndarray], truth: np.ndarray, target: float, groups: np.ndarray | None = None) -> Rule:
    """The rule kept for ``target`` (module docstring). ``groups`` says which benchmark image each
    pair belongs to (default: feature matrices are [bench, pool] and the row is the group); each
    candidate is chosen on the pairs of the even groups and measured on the odd ones, and the other
    way round; the best out-of-fold recall at the target wins and is refitted on all pairs."""
    truth = np.asarray(truth, bool)
    if groups is None:
        groups = np.broadcast_to(np.arange(truth.shape[0])[:, None], truth.shape) if truth.ndim == 2 else \
            np.arange(len(truth))
    feats = {k: np.asarray(v, np.float64).ravel() for k, v in feats.items()}
    truth, groups = truth.ravel(), np.asarray(groups).ravel()
    _, g = np.unique(groups, return_inverse=True)
    halves = [g % 2 == 0, g % 2 == 1]
    tp: dict[str, int] = {}
    fp: dict[str, int] = {}
    for a, b in (halves, halves[::-1]):
        for k, r in _candidates({k: v[a] for k, v in feats.items()}, truth[a], target).items():
            pred = r.predict({k: v[b] for k, v in feats.items()})
            tp[k] = tp.get(k, 0) + int((pred & truth[b]).sum())
            fp[k] = fp.get(k, 0) + int((pred & ~truth[b]).sum())
    final = _candidates(feats, truth, target)
    # out-of-fold: recall counts only when the precision held out of fold — is not significantly
    # below the target (the upper end of its 95 % interval reaches it: with few copies a single
    # false positive must not disqualify the best rule); when none holds, the most precise one
    seen = [k for k in final if k in tp and tp[k] + fp[k]]
    ok = [k for k in seen if clopper_pearson(tp[k], tp[k] + fp[k])[1] >= target]
    if ok:
        best = max(ok, key=lambda k: (tp[k], -fp[k], k in ("max", "logistic", "logistic-all")))
    elif seen:
        best = max(seen, key=lambda k: (tp[k] / (tp[k] + fp[k]), tp[k]))
    else:
        return Rule("single", {"none": 1.0}, 0.0, None, target)
    return final[best]


def clopper_pearson(k: int, n: int) -> tuple[float, float] | None:
    """95 % Clopper-Pearson interval of k successes in n trials (None when n = 0)."""
    if n == 0:
        return None
    from scipy.stats import binomtest  # scipy.stats: 0.9 s to import; only reports pay it

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="exact")
    return float(ci.low), float(ci.high)


def measure(pred: np.ndarray, truth: np.ndarray) -> dict:
    """TP / FP / FN, precision and recall with their 95 % Clopper-Pearson intervals."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    return {"tp": tp, "fp": fp, "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else None, "precision_ci": clopper_pearson(tp, tp + fp),
            "recall": tp / (tp + fn) if tp + fn else None, "recall_ci": clopper_pearson(tp, tp + fn)}


def fmt(x: float | None, ci: tuple | None) -> str:
    if x is None:
        return "—"
    return f"{x:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{x:.3f}"
