"""The statistics of CLIP §5 and of the counterfactual retrain, on ``scipy.stats``.

CLIP splits every evaluation set into *Overlap* (examples with a near-duplicate in the training data)
and *Clean* (the rest) and asks whether the model does better on Overlap than chance would allow:

- **One model, Overlap vs Clean** (:func:`binom_test_greater`): under the null hypothesis the model
  gets each Overlap example right with the Clean accuracy ``p0``, so the number it gets right, ``k``
  of ``n``, is Binomial(n, p0); the p-value is the upper tail P(X >= k) —
  ``scipy.stats.binomtest(k, n, p0, alternative="greater")``.
- **Its interval** (:func:`clopper_pearson`): the two-sided 99.5% Clopper-Pearson ("exact") interval
  of the Overlap accuracy, ``binomtest(k, n).proportion_ci(0.995, method="exact")``.
- **Two models on the same samples** (:func:`mcnemar`): the counterfactual compares a model trained
  on the pool as downloaded ("all") with one trained on the decontaminated pool ("clean") on the very
  same benchmark samples. Only the discordant samples carry information: b = right by A only,
  c = right by B only. Under the null (A and B equally accurate) b ~ Binomial(b + c, 1/2): the exact
  McNemar test is ``binomtest(b, b + c, 0.5)`` (two-sided). The paired difference of accuracies is
  (b − c) / n; its interval is the conditional exact one: the Clopper-Pearson interval [θl, θh] of
  θ = b / (b + c), mapped through d = (b + c) / n · (2θ − 1).
- **Power** (:func:`power`): the smallest number of correct Overlap samples whose p-value would
  clear the Bonferroni threshold at this n (``scipy.stats.binom.isf``), and the minimum detectable
  effect: the smallest true Overlap accuracy above Clean's that reaches that count with 80%
  probability (``scipy.optimize.brentq`` on ``binom.sf``), minus the Clean accuracy.

With several benchmarks tested at once, :func:`bonferroni` calls a p-value significant only when it
is below alpha / m, m being the number of the *workspace's* benchmarks that have any Overlap samples
(fixed by the workspace, not by which benchmarks one ``eval`` call evaluates).

scipy.stats takes 0.9 s to import: the functions import it on first use, so that ``clipcurate
--help`` (which imports every stage module) stays light.
"""

from __future__ import annotations

import math

CI_LEVEL = 0.995  # CLIP reports 99.5% Clopper-Pearson intervals
ALPHA = 0.05  # family-wise error rate for the Bonferroni correction
POWER = 0.8  # the power at which the minimum detectable effect is quoted


def _scipy():
    from scipy import stats as ss  # scipy.stats: 0.9 s to import, only when statistics are computed

    return ss


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def binom_test_greater(k: int, n: int, p0: float) -> float:
    """One-tailed binomial test: the p-value of seeing k or more successes out of n when each
    succeeds with probability p0 (alternative 'greater'). NaN when there is nothing to test."""
    if n <= 0 or _nan(p0) or not 0.0 <= p0 <= 1.0:
        return math.nan
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must lie in 0..n={n}")
    return float(_scipy().binomtest(int(k), int(n), float(p0), alternative="greater").pvalue)


def clopper_pearson(k: int, n: int, level: float = CI_LEVEL) -> tuple[float, float]:
    """The two-sided Clopper-Pearson interval of a proportion k/n at confidence ``level``;
    NaN, NaN when n = 0 (nothing to estimate)."""
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must lie in 0..n={n}")
    ci = _scipy().binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def mcnemar(a_right: list[bool], b_right: list[bool], level: float = CI_LEVEL) -> dict:
    """Exact McNemar test of two models' correctness on the same samples, and the paired difference
    acc(A) − acc(B) with its conditional exact interval (module docstring). Accuracies and the
    difference in %; NaN where there are no samples (or no discordant pair, for the p-value: 1)."""
    if len(a_right) != len(b_right):
        raise ValueError(f"paired samples: {len(a_right)} vs {len(b_right)}")
    n = len(a_right)
    b = sum(1 for x, y in zip(a_right, b_right) if x and not y)  # right by A only
    c = sum(1 for x, y in zip(a_right, b_right) if y and not x)  # right by B only
    out = {"n": n, "a_only": b, "b_only": c,
           "acc_a": 100.0 * sum(map(bool, a_right)) / n if n else math.nan,
           "acc_b": 100.0 * sum(map(bool, b_right)) / n if n else math.nan}
    out["diff"] = out["acc_a"] - out["acc_b"]
    if n == 0:
        out.update(p_value=math.nan, diff_low=math.nan, diff_high=math.nan)
        return out
    d = b + c
    if d == 0:  # the two models agree on every sample: no evidence either way
        out.update(p_value=1.0, diff_low=0.0, diff_high=0.0)
        return out
    out["p_value"] = float(_scipy().binomtest(b, d, 0.5).pvalue)
    lo, hi = clopper_pearson(b, d, level)
    out["diff_low"], out["diff_high"] = (100.0 * d / n * (2 * lo - 1), 100.0 * d / n * (2 * hi - 1))
    return out


def bonferroni(p_values: list[float], m: int | None = None, alpha: float = ALPHA) -> list[bool | None]:
    """Significant after Bonferroni: p < alpha / m. ``m`` defaults to the number of p-values given;
    the eval stage passes the workspace's count (:func:`clipcurate.eval.stage.bonferroni_m`).
    None for a benchmark without a p-value (no Overlap examples)."""
    if m is None:
        m = sum(1 for p in p_values if not _nan(p))
    out: list[bool | None] = []
    for p in p_values:
        out.append(None if _nan(p) else bool(p < alpha / max(1, m)))
    return out


def power(n_overlap: int, p0: float, threshold: float, target: float = POWER) -> dict:
    """What this Overlap size could have detected against Clean accuracy ``p0`` at the p-value
    ``threshold`` (alpha / m): ``min_correct`` — the fewest correct Overlap samples that would be
    significant — its accuracy ``min_acc`` (%), and ``mde`` — the smallest true Overlap accuracy
    that reaches ``min_correct`` with probability ``target``, minus Clean's (percentage points).
    NaN where no count would do (n = 0, or Clean at 100 %)."""
    nan = {"min_correct": None, "min_acc": math.nan, "mde": math.nan}
    if n_overlap <= 0 or _nan(p0) or not 0.0 <= p0 <= 1.0:
        return nan
    ss = _scipy()
    # P(X >= k | p0) < threshold  <=>  sf(k − 1) < threshold: the smallest such k, by scanning up from
    # binom.isf (the quantile; off by one either way at the boundary, so checked exactly)
    k = int(max(0, ss.binom.isf(threshold, n_overlap, p0)))
    k = max(0, k - 1)
    while k <= n_overlap and binom_test_greater(k, n_overlap, p0) >= threshold:
        k += 1
    if k > n_overlap:
        return nan
    # the true accuracy p1 at which P(X >= k | p1) = target (sf grows with p1)
    f = lambda p1: float(ss.binom.sf(k - 1, n_overlap, p1)) - target  # noqa: E731
    if f(1.0) < 0:
        p1 = 1.0
    elif f(p0) >= 0:
        p1 = p0
    else:
        from scipy.optimize import brentq  # scipy: only when statistics are computed

        p1 = brentq(f, p0, 1.0, xtol=1e-12)
    return {"min_correct": k, "min_acc": 100.0 * k / n_overlap, "mde": 100.0 * (p1 - p0)}


def section5_row(correct_overlap: int, n_overlap: int, correct_clean: int, n_clean: int,
                 level: float = CI_LEVEL, n_all: int | None = None, correct_all: int | None = None) -> dict:
    """One benchmark's row of the CLIP §5 table from its correct counts (accuracies in %).

    All = every sample (``n_all``/``correct_all``; default Overlap + Clean, i.e. nothing unreviewed).
    With nothing unreviewed All − Clean = f · (Overlap − Clean), f the overlap fraction, which is why
    a small overlap cannot move All much even when Overlap is easy. Clean gets its own interval too.
    """
    n = n_overlap + n_clean if n_all is None else n_all
    k_all = correct_overlap + correct_clean if correct_all is None else correct_all
    pct = lambda a, b: (100.0 * a / b) if b else math.nan  # noqa: E731
    acc_all = pct(k_all, n)
    acc_clean = pct(correct_clean, n_clean)
    acc_overlap = pct(correct_overlap, n_overlap)
    p0 = acc_clean / 100.0 if n_clean else math.nan
    p_value = binom_test_greater(correct_overlap, n_overlap, p0) if n_overlap and n_clean else math.nan
    lo, hi = clopper_pearson(correct_overlap, n_overlap, level)
    clo, chi = clopper_pearson(correct_clean, n_clean, level)
    return {
        "n": n,
        "n_overlap": n_overlap,
        "n_clean": n_clean,
        "overlap_pct": pct(n_overlap, n),
        "acc_all": acc_all,
        "acc_clean": acc_clean,
        "acc_overlap": acc_overlap,
        "all_minus_clean": acc_all - acc_clean,
        "overlap_minus_clean": acc_overlap - acc_clean,
        "p_value": p_value,
        "ci_low": 100.0 * lo,
        "ci_high": 100.0 * hi,
        "clean_ci_low": 100.0 * clo,
        "clean_ci_high": 100.0 * chi,
    }


def all_minus_clean_interval(correct_overlap: int, n_overlap: int, correct_clean: int, n_clean: int,
                             level: float = CI_LEVEL) -> tuple[float, float]:
    """An interval for All − Clean = f · (Overlap − Clean) (f = n_overlap / (n_overlap + n_clean))
    that includes Clean's uncertainty: f · (Overlap's lower bound − Clean's upper bound) to
    f · (Overlap's upper bound − Clean's lower bound), each bound at ``level`` — a conservative
    (Bonferroni-style) combination of the two Clopper-Pearson intervals. Also the interval of
    Overlap − Clean when divided by f; NaN without both splits."""
    if n_overlap <= 0 or n_clean <= 0:
        return math.nan, math.nan
    f = n_overlap / (n_overlap + n_clean)
    lo, hi = clopper_pearson(correct_overlap, n_overlap, level)
    clo, chi = clopper_pearson(correct_clean, n_clean, level)
    return 100.0 * f * (lo - chi), 100.0 * f * (hi - clo)
