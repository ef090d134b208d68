"""clipcurate.eval.stats (scipy.stats) against independent computations, to 1e-9 on 1,000+ random tables:
the binomial tail summed term by term, Clopper-Pearson from the beta quantiles, McNemar from exact
integer binomial sums, the minimum significant count by scanning every count."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import special

from clipcurate.eval import stats

TOL = 1e-9


def _ref_p_greater(k, n, p0):
    """P(X >= k), X ~ Binomial(n, p0): the terms summed one by one (log-gamma, fsum)."""
    if k <= 0 or p0 >= 1.0:
        return 1.0
    if p0 <= 0.0:
        return 0.0
    terms = [math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                      + i * math.log(p0) + (n - i) * math.log1p(-p0)) for i in range(k, n + 1)]
    return min(1.0, math.fsum(terms))


def _ref_ci(k, n, level=0.995):
    """Clopper-Pearson from the inverse regularised incomplete beta function."""
    a = 1 - level
    lo = 0.0 if k == 0 else special.betaincinv(k, n - k + 1, a / 2)
    hi = 1.0 if k == n else special.betaincinv(k + 1, n - k, 1 - a / 2)
    return lo, hi


def _ref_mcnemar_p(b, c):
    """Exact two-sided McNemar with integers: 2 · P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), at most 1."""
    d = b + c
    tail = Fraction(sum(math.comb(d, i) for i in range(min(b, c) + 1)), 2 ** d)
    return float(min(Fraction(1), 2 * tail))


def _random_tables(rng, count):
    for _ in range(count):
        n = int(rng.choice([1, 2, 3, 5, 10, 50, 200]) if rng.random() < 0.3 else rng.integers(1, 400))
        k = int(rng.integers(0, n + 1))
        p0 = float(rng.choice([0.0, 1.0, rng.uniform()]) if rng.random() < 0.1 else rng.uniform())
        yield k, n, p0


def test_binomial_test_and_interval_equal_independent_computation_on_1000_tables():
    rng = np.random.default_rng(1234)
    for k, n, p0 in _random_tables(rng, 1200):
        assert abs(stats.binom_test_greater(k, n, p0) - _ref_p_greater(k, n, p0)) < TOL, (k, n, p0)
        lo, hi = stats.clopper_pearson(k, n)
        rlo, rhi = _ref_ci(k, n)
        assert abs(lo - rlo) < TOL and abs(hi - rhi) < TOL, (k, n)


def test_mcnemar_equals_exact_integer_sums_on_1000_tables():
    rng = np.random.default_rng(99)
    for _ in range(1000):
        n = int(rng.integers(1, 300))
        a = rng.random(n) < rng.uniform()
        b = rng.random(n) < rng.uniform()
        res = stats.mcnemar(list(a), list(b))
        only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
        assert (res["a_only"], res["b_only"], res["n"]) == (only_a, only_b, n)
        assert res["diff"] == pytest.approx(100 * (a.sum() - b.sum()) / n, abs=1e-9)
        if only_a + only_b == 0:
            assert res["p_value"] == 1.0 and res["diff_low"] == res["diff_high"] == 0.0
            continue
        assert abs(res["p_value"] - _ref_mcnemar_p(only_a, only_b)) < TOL, (only_a, only_b)
        d = only_a + only_b
        lo, hi = _ref_ci(only_a, d)
        assert res["diff_low"] == pytest.approx(100 * d / n * (2 * lo - 1), abs=1e-7)
        assert res["diff_high"] == pytest.approx(100 * d / n * (2 * hi - 1), abs=1e-7)
        assert res["diff_low"] <= res["diff"] + 1e-9 and res["diff"] <= res["diff_high"] + 1e-9


@pytest.mark.parametrize("k,n,p0", [
    (0, 10, 0.3), (10, 10, 0.3), (10, 10, 1.0), (0, 10, 0.0), (3, 10, 0.0), (1, 1, 0.5), (0, 1, 0.5),
    (2000, 2000, 0.999), (1, 5000, 1e-6),
])
def test_edge_cases(k, n, p0):
    assert stats.binom_test_greater(k, n, p0) == pytest.approx(_ref_p_greater(k, n, p0), abs=TOL)
    lo, hi = stats.clopper_pearson(k, n)
    rlo, rhi = _ref_ci(k, n)
    assert abs(lo - rlo) < TOL and abs(hi - rhi) < TOL


def test_tiny_p_value_keeps_relative_precision():
    assert stats.binom_test_greater(60, 100, 0.1) == pytest.approx(_ref_p_greater(60, 100, 0.1), rel=1e-8)


def test_power_is_the_smallest_significant_count_and_mde_reaches_80_percent():
    rng = np.random.default_rng(5)
    for _ in range(60):
        n = int(rng.integers(1, 80))
        p0 = float(rng.uniform(0.02, 0.9))
        thr = float(rng.choice([0.05, 0.025, 0.0167]))
        res = stats.power(n, p0, thr)
        # every count, scanned: the first whose p-value clears the threshold
        ks = [k for k in range(n + 1) if _ref_p_greater(k, n, p0) < thr]
        if not ks:
            assert res["min_correct"] is None and math.isnan(res["mde"])
            continue
        assert res["min_correct"] == ks[0] and res["min_acc"] == pytest.approx(100 * ks[0] / n)
        p1 = p0 + res["mde"] / 100
        assert _ref_p_greater(ks[0], n, min(1.0, p1)) == pytest.approx(0.8, abs=1e-6) or p1 >= 1.0 - 1e-12
    assert math.isnan(stats.power(0, 0.5, 0.05)["mde"])


def test_empty_overlap_is_nan_not_an_error():
    assert math.isnan(stats.binom_test_greater(0, 0, 0.5))
    assert all(math.isnan(v) for v in stats.clopper_pearson(0, 0))
    row = stats.section5_row(correct_overlap=0, n_overlap=0, correct_clean=7, n_clean=10)
    assert row["n"] == 10 and row["n_overlap"] == 0 and row["overlap_pct"] == 0.0
    assert row["acc_all"] == row["acc_clean"] == 70.0 and row["all_minus_clean"] == 0.0
    assert math.isnan(row["acc_overlap"]) and math.isnan(row["p_value"]) and math.isnan(row["ci_low"])
    assert all(math.isnan(v) for v in stats.all_minus_clean_interval(0, 0, 7, 10))


def test_section5_row_is_consistent():
    row = stats.section5_row(correct_overlap=9, n_overlap=10, correct_clean=45, n_clean=90)
    assert row["n"] == 100 and row["overlap_pct"] == 10.0
    assert row["acc_all"] == 54.0 and row["acc_clean"] == 50.0 and row["acc_overlap"] == 90.0
    assert row["all_minus_clean"] == pytest.approx(0.10 * row["overlap_minus_clean"])
    assert row["p_value"] == pytest.approx(_ref_p_greater(9, 10, 0.5), abs=TOL)
    lo, hi = _ref_ci(9, 10)
    assert row["ci_low"] == pytest.approx(100 * lo, abs=1e-7) and row["ci_high"] == pytest.approx(100 * hi, abs=1e-7)
    clo, chi = _ref_ci(45, 90)
    assert row["clean_ci_low"] == pytest.approx(100 * clo, abs=1e-7)
    alo, ahi = stats.all_minus_clean_interval(9, 10, 45, 90)
    assert alo == pytest.approx(10 * (lo - chi), abs=1e-7) and ahi == pytest.approx(10 * (hi - clo), abs=1e-7)
    assert alo < row["all_minus_clean"] < ahi


def test_bonferroni_uses_the_given_m():
    assert stats.bonferroni([0.01, 0.02, math.nan, 0.5]) == [True, False, None, False]  # m = 3 by default
    assert stats.bonferroni([0.02], m=1) == [True] and stats.bonferroni([0.02], m=3) == [False]
    assert stats.bonferroni([math.nan]) == [None]


def test_mcnemar_interval_at_the_tests_level_excludes_zero_exactly_when_significant():
    """At level 1 − alpha the conditional exact interval and the exact McNemar test agree: the
    discordant counts are binomial with p 0.5 under the null, a symmetric distribution, so the
    two-sided p-value is twice the smaller tail and the equal-tailed interval excludes 0 iff p < alpha."""
    alpha = 0.025
    for d in range(1, 41):
        for b in range(d + 1):
            a_right = [True] * b + [False] * (d - b) + [True, False]
            b_right = [False] * b + [True] * (d - b) + [True, False]
            res = stats.mcnemar(a_right, b_right, level=1 - alpha)
            excludes = res["diff_low"] > 1e-9 or res["diff_high"] < -1e-9
            assert (res["p_value"] < alpha) == excludes, (b, d, res)
