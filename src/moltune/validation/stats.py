"""Statistics for comparing runs: bootstrap intervals, Welch's t-test, Hedges' g, corrections.

The unit of replication is the seed: each value passed here is one run's (or one seed's) figure.
SciPy does the heavy lifting (``scipy.stats.bootstrap``, ``ttest_ind``); Hedges' g and Holm's
correction are a few lines each and are tested against hand-computed values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


def _clean(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    return a[np.isfinite(a)]


def bootstrap_ci(
    values: Sequence[float],
    level: float = 0.95,
    n_resamples: int = 9999,
    seed: int | None = 0,
    statistic=np.mean,
) -> tuple[float, float]:
    """Bootstrap confidence interval of ``statistic`` (default: mean) of ``values``.

    BCa via ``scipy.stats.bootstrap``; falls back to the percentile interval where BCa is
    degenerate (tiny samples). Fewer than two finite values give ``(nan, nan)``.
    """
    a = _clean(values)
    if len(a) < 2:
        return (math.nan, math.nan)
    if np.all(a == a[0]):
        return (float(a[0]), float(a[0]))
    rng = np.random.default_rng(seed)
    for method in ("BCa", "percentile"):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap((a,), statistic, n_resamples=n_resamples, confidence_level=level,
                                  method=method, rng=rng, vectorized=True)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return (lo, hi)
    return (math.nan, math.nan)


@dataclass
class WelchResult:
    """Welch's t-test of mean(a) - mean(b) with its confidence interval."""

    t: float
    df: float
    p_value: float
    mean_diff: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict:
        return asdict(self)


def welch_t_test(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> WelchResult:
    """Welch's unequal-variance t-test (``scipy.stats.ttest_ind(equal_var=False)``).

    Needs at least two finite values per group; otherwise every field is NaN except mean_diff.
    """
    x, y = _clean(a), _clean(b)
    diff = float(np.mean(x) - np.mean(y)) if len(x) and len(y) else math.nan
    if len(x) < 2 or len(y) < 2:
        return WelchResult(math.nan, math.nan, math.nan, diff, math.nan, math.nan)
    vx, vy = np.var(x, ddof=1) / len(x), np.var(y, ddof=1) / len(y)
    if vx + vy == 0:
        p = 1.0 if diff == 0 else 0.0
        return WelchResult(math.copysign(math.inf, diff) if diff else 0.0, math.nan, p, diff, diff, diff)
    res = stats.ttest_ind(x, y, equal_var=False)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * math.sqrt(vx + vy)
    return WelchResult(float(res.statistic), float(df), float(res.pvalue), diff, float(diff - half),
                       float(diff + half))


@dataclass
class EffectSize:
    """Hedges' g (bias-corrected standardised mean difference, a - b) with a normal-approx CI."""

    g: float
    ci_low: float
    ci_high: float
    cohen_d: float

    def as_dict(self) -> dict:
        return asdict(self)


def hedges_g(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> EffectSize:
    """Hedges' g = J * (mean(a) - mean(b)) / s_pooled, J = 1 - 3 / (4 (n_a + n_b) - 9).

    Interval: g +- z * sqrt((n_a + n_b) / (n_a n_b) + g^2 / (2 (n_a + n_b))) (Hedges & Olkin).
    """
    x, y = _clean(a), _clean(b)
    n1, n2 = len(x), len(y)
    if n1 < 2 or n2 < 2:
        return EffectSize(math.nan, math.nan, math.nan, math.nan)
    pooled = math.sqrt(((n1 - 1) * np.var(x, ddof=1) + (n2 - 1) * np.var(y, ddof=1)) / (n1 + n2 - 2))
    diff = float(np.mean(x) - np.mean(y))
    if pooled == 0:
        d = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        return EffectSize(d, d, d, d)
    d = diff / pooled
    g = d * (1 - 3 / (4 * (n1 + n2) - 9))
    se = math.sqrt((n1 + n2) / (n1 * n2) + g**2 / (2 * (n1 + n2)))
    z = stats.norm.ppf(0.5 + level / 2)
    return EffectSize(float(g), float(g - z * se), float(g + z * se), float(d))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1; NaN stays NaN)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (``scipy.stats.false_discovery_control``)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


def adjust(p_values: Sequence[float], method: str = "holm") -> np.ndarray:
    """Adjust p-values for multiple comparisons: ``holm``, ``bh`` or ``none``."""
    if method == "holm":
        return holm(p_values)
    if method == "bh":
        return benjamini_hochberg(p_values)
    if method == "none":
        return np.asarray(p_values, dtype=float)
    raise ValueError(f"unknown correction {method!r}; use holm, bh or none")


def pooled_sd(a: Sequence[float], b: Sequence[float]) -> float:
    """Pooled standard deviation of two groups (seed-to-seed spread); NaN below two per group."""
    x, y = _clean(a), _clean(b)
    if len(x) < 2 or len(y) < 2:
        return math.nan
    return math.sqrt(((len(x) - 1) * np.var(x, ddof=1) + (len(y) - 1) * np.var(y, ddof=1))
                     / (len(x) + len(y) - 2))


def verdict(a: Sequence[float], b: Sequence[float], p_adjusted: float, alpha: float = 0.05) -> str:
    """Plain-language outcome of comparing a against b.

    - ``too small to decide``: fewer than two seeds in a group (no seed-to-seed variance), or not
      significant although the difference is larger than the seed-to-seed spread;
    - ``different``: adjusted p < alpha;
    - ``within seed-to-seed variance``: not significant and |mean difference| <= pooled SD.
    """
    x, y = _clean(a), _clean(b)
    if len(x) < 2 or len(y) < 2:
        return "too small to decide"
    if math.isfinite(p_adjusted) and p_adjusted < alpha:
        return "different"
    sd = pooled_sd(x, y)
    if abs(float(np.mean(x) - np.mean(y))) <= sd:
        return "within seed-to-seed variance"
    return "too small to decide"
