"""One benchmark's row of the §5 table, from its per-sample predictions — pure functions, no I/O.

Input: per sample its label, prediction, top-1 and top-5 correctness and split (``overlap``,
``clean`` or ``unreviewed``: a sample whose split still depends on undecided review pairs). Output:
the numbers of ``eval.parquet`` (clipcurate.eval.stage.EVAL), computed as follows.

1. **Counts and accuracies** on All (every sample), Clean and Overlap *as decided* (unreviewed
   samples are in All only), with Clopper-Pearson intervals for Overlap *and* Clean, the one-tailed
   binomial p-value of Overlap against Clean, and All − Clean with an interval that carries both
   splits' uncertainty (clipcurate.eval.stats).
2. **The bounds the unreviewed samples allow**: All − Clean and the p-value once with every
   unreviewed sample counted Overlap, once with every one counted Clean. With nothing unreviewed
   both ends equal the decided figure.
3. **What else could explain Overlap − Clean**: the chance level (1 / classes; 1 / n for captions),
   top-5 and balanced accuracy (mean per-class recall), the share of the most predicted class (a
   collapse when it is above 50 %), and the **class-mix-adjusted** gap: Clean's per-class accuracy
   applied to Overlap's classes gives the Overlap accuracy that class mix alone predicts
   (``expected_overlap``); ``adjusted_gap`` = Overlap − that. A class with no Clean sample takes
   Clean's overall accuracy.
4. **Power**: the smallest Overlap accuracy that would have been significant at this n and this
   Bonferroni threshold, and the minimum detectable effect at 80% power (clipcurate.eval.stats.power).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from clipcurate.eval import stats

COLLAPSE_SHARE = 50.0  # % of predictions in one class above which the report warns of a collapse


def _count(correct: np.ndarray, mask: np.ndarray) -> tuple[int, int]:
    return int(correct[mask].sum()), int(mask.sum())


def class_mix(labels: np.ndarray, correct: np.ndarray, split: np.ndarray) -> tuple[float, float]:
    """(expected_overlap, adjusted_gap) in %: Clean's per-class accuracy applied to Overlap's classes."""
    ov, cl = split == "overlap", split == "clean"
    if not ov.any() or not cl.any():
        return math.nan, math.nan
    overall = float(correct[cl].mean())
    per_class = {int(c): float(correct[cl & (labels == c)].mean()) for c in np.unique(labels[cl])}
    expected = float(np.mean([per_class.get(int(c), overall) for c in labels[ov]]))
    return 100.0 * expected, 100.0 * (float(correct[ov].mean()) - expected)


def balanced_accuracy(labels: np.ndarray, correct: np.ndarray) -> float:
    """Mean over the classes present of the share of that class's samples predicted right (%)."""
    if not len(labels):
        return math.nan
    return 100.0 * float(np.mean([correct[labels == c].mean() for c in np.unique(labels)]))


def _end(correct: np.ndarray, overlap: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """(All − Clean, p-value) with the given Overlap and Clean masks."""
    ko, no = _count(correct, overlap)
    kc, nc = _count(correct, clean)
    r = stats.section5_row(ko, no, kc, nc, n_all=len(correct), correct_all=int(correct.sum()))
    return r["all_minus_clean"], r["p_value"]


def benchmark_row(kind: str, labels, preds, correct, correct_top5, split, n_classes: int,
                  threshold: float, level: float = stats.CI_LEVEL) -> dict:
    """The §5 numbers of one benchmark (see the module docstring); ``threshold`` = alpha / m."""
    labels, preds = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
    correct, top5 = np.asarray(correct, bool), np.asarray(correct_top5, bool)
    split = np.asarray(split, dtype=object)
    ov, cl, un = split == "overlap", split == "clean", split == "unreviewed"
    ko, no = _count(correct, ov)
    kc, nc = _count(correct, cl)
    row = stats.section5_row(ko, no, kc, nc, level, n_all=len(correct), correct_all=int(correct.sum()))
    row["n_unreviewed"] = int(un.sum())
    row["amc_ci_low"], row["amc_ci_high"] = stats.all_minus_clean_interval(ko, no, kc, nc, level)
    if row["n_unreviewed"]:  # the interval above is for decided splits only; All also holds the unreviewed
        row["amc_ci_low"] = row["amc_ci_high"] = math.nan
    row["amc_if_overlap"], row["p_if_overlap"] = _end(correct, ov | un, cl)
    row["amc_if_clean"], row["p_if_clean"] = _end(correct, ov, cl | un)
    n = len(correct)
    row["chance"] = 100.0 / n_classes if kind == "classification" and n_classes else (100.0 / n if n else math.nan)
    row["top5"] = 100.0 * float(top5.mean()) if n else math.nan
    row["balanced_acc"] = balanced_accuracy(labels, correct) if kind == "classification" else math.nan
    if n and kind == "classification":
        cls, cnt = Counter(preds.tolist()).most_common(1)[0]
        row["top_pred"], row["top_pred_share"] = int(cls), 100.0 * cnt / n
    else:
        row["top_pred"], row["top_pred_share"] = None, math.nan
    row["collapse"] = bool(row["top_pred_share"] > COLLAPSE_SHARE) if not math.isnan(row["top_pred_share"]) else False
    if kind == "classification":
        row["expected_overlap"], row["adjusted_gap"] = class_mix(labels, correct, split)
    else:
        row["expected_overlap"], row["adjusted_gap"] = math.nan, math.nan
    pw = stats.power(no, kc / nc if nc else math.nan, threshold) if no and nc else stats.power(0, 0.0, threshold)
    row["power_min_acc"], row["mde"] = pw["min_acc"], pw["mde"]
    return row
