"""The statistics of CLIP §5: is a benchmark's Overlap accuracy higher than its Clean accuracy?

CLIP splits every evaluation set into *Overlap* (examples with a near-duplicate in the training data)
and *Clean* (the rest) and asks whether the model does better on Overlap than chance would allow.
The test is a one-tailed binomial test: under the null hypothesis the model gets each Overlap example
right with the Clean accuracy ``p0``, so the number it gets right, ``k`` out of ``n``, is
Binomial(n, p0), and the p-value is the upper tail

    P(X >= k) = sum_{i=k..n} C(n, i) p0^i (1 - p0)^(n - i).

Alongside, a two-sided 99.5% Clopper-Pearson ("exact") interval for the Overlap accuracy: the set
of success probabilities ``p`` that a one-sided test at level alpha/2 would not reject, i.e.

    lower = the p with P(X >= k | n, p) = alpha/2      (0 when k = 0)
    upper = the p with P(X <= k | n, p) = alpha/2      (1 when k = n)

Both are computed here from the binomial sums themselves — no statistics library — and
tests/test_stats.py checks them against ``scipy.stats.binomtest`` and ``scipy.stats.beta.ppf``.

With several benchmarks tested at once, :func:`bonferroni` calls a p-value significant only when
it is below alpha / m, m being the number of benchmarks that have any Overlap examples at all.
"""

from __future__ import annotations

import functools
import math

import numpy as np

CI_LEVEL = 0.995  # CLIP reports 99.5% Clopper-Pearson intervals
ALPHA = 0.05  # family-wise error rate for the Bonferroni correction


@functools.lru_cache(maxsize=128)
def _log_choose(n: int) -> np.ndarray:
    """log C(n, i) for i = 0..n from log-gamma: lgamma(n+1) - lgamma(i+1) - lgamma(n-i+1)."""
    lg = np.array([math.lgamma(i + 1) for i in range(n + 1)], dtype=np.float64)  # log i!
    out = lg[n] - lg - lg[::-1]
    out.setflags(write=False)
    return out


def _log_pmf(n: int, p: float) -> np.ndarray:
    """log P(X = i) for i = 0..n, X ~ Binomial(n, p), 0 < p < 1 — in logs so nothing overflows."""
    i = np.arange(n + 1, dtype=np.float64)
    return _log_choose(n) + i * math.log(p) + (n - i) * math.log1p(-p)


def _sum_exp(logs: np.ndarray) -> float:
    """sum(exp(logs)) without underflow: factor out the largest term (log-sum-exp)."""
    if logs.size == 0:
        return 0.0
    m = float(logs.max())
    if m == -math.inf:
        return 0.0
    return math.exp(m) * float(np.sum(np.exp(logs - m)))  # pairwise summation


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the upper tail, the terms i = k..n summed."""
    if k <= 0 or p >= 1.0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    logs = _log_pmf(n, p)
    upper = _sum_exp(logs[k:])
    # A tail close to 1 is more accurate as 1 − (the other tail); a small one is summed directly,
    # so a tiny p-value is never lost to cancellation.
    return min(1.0, 1.0 - _sum_exp(logs[:k]) if upper > 0.5 else upper)


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p): the lower tail, the terms i = 0..k summed."""
    if k >= n or p <= 0.0:
        return 1.0
    if k < 0 or p >= 1.0:
        return 0.0
    logs = _log_pmf(n, p)
    lower = _sum_exp(logs[: k + 1])
    return min(1.0, 1.0 - _sum_exp(logs[k + 1:]) if lower > 0.5 else lower)


def binom_test_greater(k: int, n: int, p0: float) -> float:
    """One-tailed binomial test: the p-value of seeing k or more successes out of n when each
    succeeds with probability p0 (alternative 'greater'). NaN when there is nothing to test."""
    if n <= 0 or p0 is None or not (0.0 <= p0 <= 1.0) or math.isnan(p0):
        return math.nan
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must lie in 0..n={n}")
    return binom_sf(k, n, p0)


def _bisect(f, target: float, increasing: bool) -> float:
    """The p in [0, 1] with f(p) = target for a monotone f, by bisection to machine precision."""
    lo, hi = 0.0, 1.0
    for _ in range(64):  # 2^-64 of the unit interval: far below the 1e-9 we promise
        mid = 0.5 * (lo + hi)
        above = f(mid) > target
        if above == increasing:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


def clopper_pearson(k: int, n: int, level: float = CI_LEVEL) -> tuple[float, float]:
    """The two-sided Clopper-Pearson interval for a proportion k/n at confidence ``level``.

    lower: P(X >= k | p) grows with p; find where it reaches alpha/2 (0 when k = 0).
    upper: P(X <= k | p) shrinks with p; find where it falls to alpha/2 (1 when k = n).
    NaN, NaN when n = 0 (no Overlap examples: nothing to estimate).
    """
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must lie in 0..n={n}")
    half = (1.0 - level) / 2.0
    lower = 0.0 if k == 0 else _bisect(lambda p: binom_sf(k, n, p), half, increasing=True)
    upper = 1.0 if k == n else _bisect(lambda p: binom_cdf(k, n, p), half, increasing=False)
    return lower, upper


def bonferroni(p_values: list[float], alpha: float = ALPHA) -> list[bool | None]:
    """Significant after Bonferroni: p < alpha / m over the m benchmarks that have a p-value.
    None for a benchmark without one (no Overlap examples)."""
    m = sum(1 for p in p_values if p is not None and not math.isnan(p))
    out: list[bool | None] = []
    for p in p_values:
        if p is None or math.isnan(p):
            out.append(None)
        else:
            out.append(bool(p < alpha / m))
    return out


def section5_row(correct_overlap: int, n_overlap: int, correct_clean: int, n_clean: int,
                 level: float = CI_LEVEL) -> dict:
    """One benchmark's row of the CLIP §5 table from its correct counts (accuracies in %).

    All = (correct_overlap + correct_clean) / n; All − Clean = f · (Overlap − Clean) with f the
    overlap fraction, which is why a small overlap cannot move All much even when Overlap is easy.
    """
    n = n_overlap + n_clean
    pct = lambda a, b: (100.0 * a / b) if b else math.nan  # noqa: E731
    acc_all = pct(correct_overlap + correct_clean, n)
    acc_clean = pct(correct_clean, n_clean)
    acc_overlap = pct(correct_overlap, n_overlap)
    p0 = acc_clean / 100.0 if n_clean else math.nan
    p_value = binom_test_greater(correct_overlap, n_overlap, p0) if n_overlap and n_clean else math.nan
    lo, hi = clopper_pearson(correct_overlap, n_overlap, level)
    return {
        "n": n,
        "n_overlap": n_overlap,
        "overlap_pct": pct(n_overlap, n),
        "acc_all": acc_all,
        "acc_clean": acc_clean,
        "acc_overlap": acc_overlap,
        "all_minus_clean": acc_all - acc_clean,
        "overlap_minus_clean": acc_overlap - acc_clean,
        "p_value": p_value,
        "ci_low": 100.0 * lo,
        "ci_high": 100.0 * hi,
    }
