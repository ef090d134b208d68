"""clipcurate.eval.stats against scipy: the binomial test and the Clopper-Pearson interval to 1e-9."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as ss

from clipcurate.eval import stats

TOL = 1e-9


def _scipy_p(k, n, p0):
    return ss.binomtest(k, n, p0, alternative="greater").pvalue


def _scipy_ci(k, n, level=0.995):
    a = 1 - level
    lo = 0.0 if k == 0 else ss.beta.ppf(a / 2, k, n - k + 1)
    hi = 1.0 if k == n else ss.beta.ppf(1 - a / 2, k + 1, n - k)
    return lo, hi


def test_random_tables_match_scipy():
    rng = np.random.default_rng(1234)
    for _ in range(400):
        n = int(rng.choice([1, 2, 3, 5, 10, 50, 200, 1000, 5000]) if rng.random() < 0.3 else rng.integers(1, 2000))
        k = int(rng.integers(0, n + 1))
        p0 = float(rng.choice([0.0, 1.0, rng.uniform()]) if rng.random() < 0.1 else rng.uniform())
        assert stats.binom_test_greater(k, n, p0) == pytest.approx(_scipy_p(k, n, p0), abs=TOL), (k, n, p0)
        lo, hi = stats.clopper_pearson(k, n)
        rlo, rhi = _scipy_ci(k, n)
        assert abs(lo - rlo) < TOL and abs(hi - rhi) < TOL, (k, n)


def test_scipy_proportion_ci_agrees_too():
    for k, n in [(0, 1), (1, 1), (3, 10), (97, 100), (500, 1000)]:
        ci = ss.binomtest(k, n).proportion_ci(confidence_level=0.995, method="exact")
        lo, hi = stats.clopper_pearson(k, n)
        assert abs(lo - ci.low) < TOL and abs(hi - ci.high) < TOL


@pytest.mark.parametrize("k,n,p0", [
    (0, 10, 0.3),      # 0 % Overlap accuracy: p-value 1
    (10, 10, 0.3),     # 100 % Overlap accuracy
    (10, 10, 1.0),     # Clean 100 %, Overlap 100 %
    (0, 10, 0.0),      # Clean 0 %, Overlap 0 %
    (3, 10, 0.0),      # Clean 0 %, any Overlap hit is impossible under the null
    (1, 1, 0.5),
    (0, 1, 0.5),
    (2000, 2000, 0.999),
    (1, 5000, 1e-6),   # tiny p-values are summed directly, not lost to 1 − x
])
def test_edge_cases_match_scipy(k, n, p0):
    assert stats.binom_test_greater(k, n, p0) == pytest.approx(_scipy_p(k, n, p0), abs=TOL)
    lo, hi = stats.clopper_pearson(k, n)
    rlo, rhi = _scipy_ci(k, n)
    assert abs(lo - rlo) < TOL and abs(hi - rhi) < TOL


def test_tiny_p_value_keeps_relative_precision():
    k, n, p0 = 60, 100, 0.1
    ref = _scipy_p(k, n, p0)
    assert ref < 1e-20 and stats.binom_test_greater(k, n, p0) == pytest.approx(ref, rel=1e-8)


def test_empty_overlap_is_nan_not_an_error():
    assert math.isnan(stats.binom_test_greater(0, 0, 0.5))
    assert all(math.isnan(v) for v in stats.clopper_pearson(0, 0))
    row = stats.section5_row(correct_overlap=0, n_overlap=0, correct_clean=7, n_clean=10)
    assert row["n"] == 10 and row["n_overlap"] == 0 and row["overlap_pct"] == 0.0
    assert row["acc_all"] == row["acc_clean"] == 70.0 and row["all_minus_clean"] == 0.0
    assert math.isnan(row["acc_overlap"]) and math.isnan(row["p_value"]) and math.isnan(row["ci_low"])


def test_section5_row_is_consistent():
    row = stats.section5_row(correct_overlap=9, n_overlap=10, correct_clean=45, n_clean=90)
    assert row["n"] == 100 and row["overlap_pct"] == 10.0
    assert row["acc_all"] == 54.0 and row["acc_clean"] == 50.0 and row["acc_overlap"] == 90.0
    # All − Clean = f · (Overlap − Clean)
    assert row["all_minus_clean"] == pytest.approx(0.10 * row["overlap_minus_clean"])
    assert row["p_value"] == pytest.approx(_scipy_p(9, 10, 0.5), abs=TOL)
    lo, hi = _scipy_ci(9, 10)
    assert row["ci_low"] == pytest.approx(100 * lo, abs=1e-7) and row["ci_high"] == pytest.approx(100 * hi, abs=1e-7)


def test_bonferroni_counts_only_testable_benchmarks():
    # 3 testable benchmarks → threshold 0.05 / 3
    assert stats.bonferroni([0.01, 0.02, math.nan, 0.5]) == [True, False, None, False]
    assert stats.bonferroni([math.nan]) == [None]
    assert stats.bonferroni([0.049]) == [True]
