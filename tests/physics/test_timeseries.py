"""Time-series statistics: Sokal's tau on AR(1), batch means on an exact two-state chain.

The two-state chain (P(0 -> 1) = a, P(1 -> 0) = b) is the model of a rare basin: its indicator
has rho(t) = (1 - a - b)^t, so tau = (2 - a - b) / (a + b) exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from moltune.physics.timeseries import batch_means, integrated_autocorrelation, n_transitions


def test_autocorrelation_time_of_ar1_matches_analytic():
    from scipy.signal import lfilter

    from moltune.flow.metrics import integrated_autocorr_time

    for rho in (0.5, 0.8, 0.95):
        n = 200_000
        x = lfilter([1.0], [1.0, -rho], np.random.default_rng(1).normal(size=n))
        est = integrated_autocorrelation(x)
        exact = 1 + 2 * rho / (1 - rho)
        assert est.estimable and abs(est.tau - exact) < 3 * est.tau_error, (rho, est, exact)
        assert est.tau_error < 0.1 * exact  # the error bar is informative, not huge
        assert est.ess == pytest.approx(n / est.tau)
        # same estimator as the flow metrics' one
        assert est.tau == pytest.approx(integrated_autocorr_time(x), rel=1e-12)
        # mean error: sigma sqrt(tau / n) against the exact SE of an AR(1) mean
        se = math.sqrt(1 / (1 - rho**2)) * math.sqrt(exact / n)
        assert est.mean_error == pytest.approx(se, rel=0.15)
    # independent samples: tau ~ 1
    white = integrated_autocorrelation(np.random.default_rng(2).normal(size=50_000))
    assert abs(white.tau - 1.0) < 3 * white.tau_error + 0.02


def test_constant_observable_has_no_ess():
    est = integrated_autocorrelation(np.zeros(500))
    assert not est.estimable and math.isnan(est.ess) and math.isnan(est.tau)
    assert n_transitions(np.array([0, 0, 1, 1, 0, 1])) == 3
    with pytest.raises(ValueError):
        integrated_autocorrelation(np.array([0.0, np.nan, 1.0, 2.0]))


def two_state_chain(n: int, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    """0/1 indicator of a stationary two-state Markov chain, built from geometric dwell times."""
    out, state, filled = np.empty(n), rng.random() < a / (a + b), 0
    while filled < n:
        dwell = int(rng.geometric(b if state else a))
        out[filled : filled + dwell] = state
        filled += dwell
        state = not state
    return out


# a basin holding 1% of the frames, visits of 50 frames on average: tau = 98 frames
A, B = 0.01 / 0.99 / 50, 1 / 50
TAU = (2 - A - B) / (A + B)


def test_batch_means_recovers_the_ess_of_a_rare_state_from_short_runs():
    rng = np.random.default_rng(3)
    runs = [two_state_chain(5_000, A, B, rng) for _ in range(60)]  # ~50 tau, ~1 visit each
    est = batch_means(runs, 1_000)  # 10 tau per batch
    exact = 60 * 5_000 / TAU
    assert abs(est.ess - exact) < 2.5 * est.ess_error, (est, exact)
    assert est.ess_error < 0.25 * exact
    assert est.n_batches == 300 and est.n_frames == 300_000
    assert est.mean == pytest.approx(np.concatenate(runs).mean())
    # the error of the mean follows from the same ESS: sigma / sqrt(ESS)
    assert est.mean_error == pytest.approx(np.concatenate(runs).std() / math.sqrt(est.ess))
    # the windowed estimator on the same short runs: several times too many samples
    sokal = [integrated_autocorrelation(x) for x in runs]
    per_frame = [e.ess / e.n for e in sokal if e.estimable]
    assert np.median(per_frame) > 1.5 / TAU
    # batches far shorter than tau are correlated: batch means then overstates the ESS too
    assert batch_means(runs, 10).ess > 3 * exact


def test_batch_means_pools_runs_saved_at_different_intervals():
    rng = np.random.default_rng(4)
    fine = [two_state_chain(20_000, A, B, rng) for _ in range(10)]
    coarse = [x[::10] for x in (two_state_chain(20_000, A, B, rng) for _ in range(10))]
    est = batch_means(fine + coarse, [2_000] * 10 + [200] * 10)  # 2,000 fine frames per batch
    assert est.n_batches == 200
    # the ESS belongs to the sampled time (400,000 fine steps / tau), not to the frame count:
    # a frame every 10 steps loses almost nothing when tau is 98 steps
    exact = 20 * 20_000 / TAU
    assert abs(est.ess - exact) < 2.5 * est.ess_error, (est, exact)


def test_batch_means_rejects_bad_input():
    with pytest.raises(ValueError, match="two whole batches"):
        batch_means([np.zeros(10)], 10)
    with pytest.raises(ValueError, match="NaN"):
        batch_means([np.array([0.0, np.nan, 1.0, 1.0])], 1)
    with pytest.raises(ValueError, match="one per series"):
        batch_means([np.zeros(10), np.zeros(10)], [5])
