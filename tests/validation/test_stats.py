"""Statistics against SciPy and hand-computed values; bootstrap coverage on a simulated case."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from moltune.validation import stats


def test_welch_matches_scipy_and_textbook_df():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 1.0, 7), rng.normal(0.0, 3.0, 12)
    w = stats.welch_t_test(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert w.t == pytest.approx(ref.statistic, rel=1e-12)
    assert w.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    va, vb = a.var(ddof=1) / 7, b.var(ddof=1) / 12
    df = (va + vb) ** 2 / (va**2 / 6 + vb**2 / 11)  # Welch-Satterthwaite
    assert w.df == pytest.approx(df, rel=1e-12)
    ci = ref.confidence_interval(0.95)
    assert (w.ci_low, w.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_welch_known_case():
    # a = 1..5, b = 3,4,5,6,9: diff -2.4, var 2.5 and 5.3 -> t = -2.4 / sqrt(0.5 + 1.06)
    w = stats.welch_t_test([1, 2, 3, 4, 5], [3, 4, 5, 6, 9])
    assert w.t == pytest.approx(-2.4 / math.sqrt(1.56), rel=1e-12)
    assert w.mean_diff == pytest.approx(-2.4)


def test_hedges_g_known_case():
    # a = 1..5, b = 3..7: pooled sd = sqrt(2.5), d = -2 / sqrt(2.5) = -1.26491,
    # J = 1 - 3 / (4 * 10 - 9) = 28 / 31, g = -1.14250
    g = stats.hedges_g([1, 2, 3, 4, 5], [3, 4, 5, 6, 7])
    assert g.cohen_d == pytest.approx(-1.2649110640673518, rel=1e-12)
    assert g.g == pytest.approx(-1.2649110640673518 * 28 / 31, rel=1e-12)
    se = math.sqrt(10 / 25 + g.g**2 / 20)
    assert (g.ci_low, g.ci_high) == pytest.approx((g.g - 1.959963985 * se, g.g + 1.959963985 * se))


def test_hedges_g_interval_covers_true_effect():
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(400):
        g = stats.hedges_g(rng.normal(0.5, 1, 20), rng.normal(0, 1, 20))
        hits += g.ci_low <= 0.5 <= g.ci_high
    assert 0.91 <= hits / 400 <= 0.98


def test_bootstrap_ci_coverage_is_about_95_percent():
    rng = np.random.default_rng(0)
    n_rep, hits, widths = 300, 0, []
    for i in range(n_rep):
        x = rng.normal(2.0, 1.5, 40)
        lo, hi = stats.bootstrap_ci(x, n_resamples=1999, seed=i)
        hits += lo <= 2.0 <= hi
        widths.append(hi - lo)
    coverage = hits / n_rep
    assert 0.91 <= coverage <= 0.98, coverage
    # width close to the t interval's 2 * 2.02 * 1.5 / sqrt(40) = 0.96
    assert np.mean(widths) == pytest.approx(2 * sps.t.ppf(0.975, 39) * 1.5 / math.sqrt(40), rel=0.1)


def test_bootstrap_degenerate_inputs():
    assert all(math.isnan(v) for v in stats.bootstrap_ci([1.0]))
    assert stats.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    lo, hi = stats.bootstrap_ci([1.0, 2.0, math.nan, 3.0])
    assert 1.0 <= lo < hi <= 3.0


def test_holm_and_bh_known_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    np.testing.assert_allclose(stats.holm(p), [0.03, 0.06, 0.06, 0.02])
    # BH: 0.005*4/1=0.02, 0.01*4/2=0.02, 0.03*4/3=0.04, 0.04*4/4=0.04
    np.testing.assert_allclose(stats.benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02])
    assert np.isnan(stats.holm([0.01, math.nan])[1])


def test_verdicts():
    assert stats.verdict([1.0], [2.0, 3.0], math.nan) == "too small to decide"
    assert stats.verdict([1.0, 1.1, 0.9], [5.0, 5.1, 4.9], 0.001) == "different"
    assert stats.verdict([1.0, 2.0, 3.0], [1.5, 2.5, 3.5], 0.5) == "within seed-to-seed variance"
    assert stats.verdict([1.0, 1.1], [3.0, 6.0], 0.2) == "too small to decide"
