"""Transport metrics on systems with known answers (harmonic wells, AR(1) series, histograms)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special

from moltune.flow.metrics import (
    acceptance_summary,
    integrated_autocorr_time,
    jeffreys_divergence,
    js_divergence,
    make_pairs,
    min_interatomic_distance,
    n_time_blocks,
    normalized_ess,
    periodic_histogram2d,
    ramachandran_js,
    reconstruction_rmsd,
)
from moltune.flow.swaps import (
    acceptance_probability,
    forward_work,
    inverse_work,
    log_acceptance_flow,
    log_acceptance_naive,
)

KB = 0.00831446261815324  # kJ/mol/K
K_SPRING = 500.0  # kJ/mol/nm^2


def _naive_acceptance_harmonic(beta_i: float, beta_j: float, dof: int) -> float:
    """Exact mean naive-swap acceptance for U = k|x|^2/2 in ``dof`` dimensions.

    beta U ~ Gamma(dof/2) at each temperature; D = c1 g1 - c2 g2 with g = beta U,
    c1 = 1 - b_j/b_i, c2 = b_i/b_j - 1; the inner expectation over g2 is closed-form.
    """
    a = dof / 2
    c1, c2 = 1 - beta_j / beta_i, beta_i / beta_j - 1

    def inner(g1: float) -> float:
        g_star = c1 * g1 / c2
        q = special.gammaincc(a, (1 + c2) * g_star)
        tail = math.exp(c1 * g1 - a * math.log(1 + c2) + math.log(q)) if q > 0 else 0.0
        return special.gammainc(a, g_star) + tail

    val, _ = integrate.quad(
        lambda g: inner(g) * math.exp((a - 1) * math.log(g) - g - special.gammaln(a)),
        0,
        np.inf,
        limit=200,
    )
    return val


def _harmonic_samples(n: int, n_atoms: int, temp: float, rng, rho: float = 0.0) -> np.ndarray:
    """Boltzmann samples [n, n_atoms, 3] (nm); rho > 0 makes them an AR(1) time series."""
    sigma = math.sqrt(KB * temp / K_SPRING)
    z = rng.normal(size=(n, n_atoms, 3))
    if rho > 0:
        for t in range(1, n):
            z[t] = rho * z[t - 1] + math.sqrt(1 - rho * rho) * z[t]
    return sigma * z


def _u(x: np.ndarray) -> np.ndarray:
    return 0.5 * K_SPRING * np.sum(x * x, axis=(1, 2))


def _evaluate_scale_map(x, y, t_i, t_j, scale, n_pairs=10_000, seed=0):
    """Naive and flow acceptance, works and Jeffreys for the map T(x) = scale * x."""
    b_i, b_j = 1 / (KB * t_i), 1 / (KB * t_j)
    dof = x.shape[1] * 3
    u_x, u_y = _u(x), _u(y)
    u_tx, u_ti = _u(scale * x), _u(y / scale)
    ld_f = np.full(len(x), dof * math.log(scale))
    ld_i = np.full(len(y), -dof * math.log(scale))
    n_blocks = n_time_blocks(u_x, u_y)
    a, b = make_pairs(len(x), len(y), n_pairs, seed=seed, n_blocks=n_blocks)
    acc_naive = acceptance_probability(log_acceptance_naive(u_x[a], u_y[b], b_i, b_j))
    acc_flow = acceptance_probability(
        log_acceptance_flow(u_x[a], u_y[b], u_tx[a], u_ti[b], ld_f[a], ld_i[b], b_i, b_j)
    )
    wf = forward_work(u_x, u_tx, ld_f, b_i, b_j)
    wr = inverse_work(u_y, u_ti, ld_i, b_i, b_j)
    summ = lambda v: acceptance_summary(v, a, b, len(x), len(y), n_blocks, n_boot=300, seed=seed)
    return summ(acc_naive), summ(acc_flow), wf, wr


def test_optimal_scale_map_gives_acceptance_one_and_zero_jeffreys():
    rng = np.random.default_rng(0)
    t_i, t_j, n_atoms = 300.0, 450.0, 2
    x = _harmonic_samples(4000, n_atoms, t_i, rng)
    y = _harmonic_samples(4000, n_atoms, t_j, rng)
    naive, flow, wf, wr = _evaluate_scale_map(x, y, t_i, t_j, math.sqrt(t_j / t_i))
    assert flow["mean"] == pytest.approx(1.0, abs=1e-12)
    assert flow["ci95"] == pytest.approx([1.0, 1.0], abs=1e-12)
    assert jeffreys_divergence(wf, wr) == pytest.approx(0.0, abs=1e-9)
    assert normalized_ess(-wf) == pytest.approx(1.0, abs=1e-9)
    assert flow["n_pairs"] == 10_000
    # the naive swap matches the exact value, inside its interval
    exact = _naive_acceptance_harmonic(1 / (KB * t_i), 1 / (KB * t_j), 3 * n_atoms)
    assert 0.3 < exact < 0.9
    assert naive["ci95"][0] <= exact <= naive["ci95"][1]
    assert naive["mean"] == pytest.approx(exact, abs=0.02)


def test_identity_jeffreys_matches_analytic_harmonic_value():
    rng = np.random.default_rng(1)
    t_i, t_j, n_atoms = 300.0, 450.0, 4
    x = _harmonic_samples(8000, n_atoms, t_i, rng)
    y = _harmonic_samples(8000, n_atoms, t_j, rng)
    _, _, wf, wr = _evaluate_scale_map(x, y, t_i, t_j, 1.0)
    b_i, b_j, dof = 1 / (KB * t_i), 1 / (KB * t_j), 3 * n_atoms
    # J = (b_i - b_j)(<U>_j - <U>_i), <U>_T = dof kT / 2
    exact = (b_i - b_j) * dof / 2 * (1 / b_j - 1 / b_i)
    assert jeffreys_divergence(wf, wr) == pytest.approx(exact, rel=0.03)
    # a non-optimal scale lies between: J > 0 but below the identity's
    _, _, wf2, wr2 = _evaluate_scale_map(x, y, t_i, t_j, (t_j / t_i) ** 0.25)
    assert 0.05 * exact < jeffreys_divergence(wf2, wr2) < 0.5 * exact


def test_interval_covers_truth_for_independent_and_correlated_frames():
    """95% intervals cover the exact acceptance in most repeats; correlation widens them."""
    t_i, t_j, n_atoms = 300.0, 450.0, 2
    exact = _naive_acceptance_harmonic(1 / (KB * t_i), 1 / (KB * t_j), 3 * n_atoms)
    widths, covered = {}, {}
    for rho in (0.0, 0.9):
        hits, w = 0, []
        for rep in range(20):
            rng = np.random.default_rng(100 + rep)
            x = _harmonic_samples(1000, n_atoms, t_i, rng, rho)
            y = _harmonic_samples(1000, n_atoms, t_j, rng, rho)
            naive, _, _, _ = _evaluate_scale_map(x, y, t_i, t_j, 1.0, n_pairs=4000, seed=rep)
            lo, hi = naive["ci95"]
            hits += lo <= exact <= hi
            w.append(hi - lo)
        covered[rho], widths[rho] = hits, float(np.mean(w))
    assert covered[0.0] >= 17 and covered[0.9] >= 16, covered
    assert widths[0.9] > 2.0 * widths[0.0], widths


def test_make_pairs_distinct_and_excludes_same_time_block():
    a, b = make_pairs(300, 200, 10_000, seed=3, n_blocks=20)
    assert a.size == 10_000
    assert len(set(zip(a.tolist(), b.tolist()))) == 10_000
    assert not np.any((a * 20) // 300 == (b * 20) // 200)
    # small sets: every eligible pair once
    a, b = make_pairs(10, 10, 10_000, seed=0)
    assert a.size == 100


def test_autocorrelation_time_of_ar1():
    rng = np.random.default_rng(5)
    rho, n = 0.9, 100_000
    z = rng.normal(size=n)
    x = np.empty(n)
    x[0] = z[0]
    for t in range(1, n):
        x[t] = rho * x[t - 1] + math.sqrt(1 - rho * rho) * z[t]
    assert integrated_autocorr_time(x) == pytest.approx((1 + rho) / (1 - rho), rel=0.15)
    assert integrated_autocorr_time(z) == pytest.approx(1.0, abs=0.1)


def test_ess_sanity():
    assert normalized_ess(np.zeros(100)) == pytest.approx(1.0)
    assert normalized_ess(np.array([0.0] + [-1e3] * 99)) == pytest.approx(0.01)
    rng = np.random.default_rng(2)
    # log-normal weights with sigma^2 = 0.25: ESS/n -> exp(-sigma^2)
    assert normalized_ess(rng.normal(0, 0.5, 400_000)) == pytest.approx(math.exp(-0.25), abs=0.01)
    assert normalized_ess(np.array([0.0, -np.inf, np.nan, 0.0])) == pytest.approx(0.5)
    assert normalized_ess(np.array([np.nan, np.nan])) == 0.0


def test_js_divergence():
    rng = np.random.default_rng(3)
    phi, psi = rng.uniform(-np.pi, np.pi, (2, 5000))
    h = periodic_histogram2d(phi, psi)
    assert h.sum() == pytest.approx(1.0)
    assert js_divergence(h, h) == 0.0
    assert ramachandran_js(phi[:, None], psi[:, None], phi[:, None], psi[:, None]) == 0.0
    # disjoint supports: ln 2
    p, q = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert js_divergence(p, q) == pytest.approx(math.log(2))
    # angles differing by 2 pi land in the same bins
    assert ramachandran_js(phi, psi, phi + 2 * np.pi, psi - 2 * np.pi) == pytest.approx(
        0.0, abs=1e-12
    )
    # a shifted distribution is clearly different; NaN frames are ignored
    shifted = ramachandran_js(0.3 * phi, 0.3 * psi, 0.3 * phi + 1.0, 0.3 * psi)
    assert 0.2 < shifted < math.log(2)
    phi_nan = phi.copy()
    phi_nan[:10] = np.nan
    assert ramachandran_js(phi_nan, psi, phi, psi) < 0.01


def test_min_distance_and_reconstruction():
    x = np.zeros((3, 3, 3))
    x[:, 1, 0] = [0.15, 0.2, 0.3]
    x[:, 2, 0] = 1.0
    assert min_interatomic_distance(x) == pytest.approx(0.15)
    x[0, 0, 0] = np.nan  # frame 0 no longer counts
    assert min_interatomic_distance(x) == pytest.approx(0.2)
    a = np.zeros((4, 5, 3))
    b = a.copy()
    b[..., 2] += 1e-3
    assert reconstruction_rmsd(a, b) == pytest.approx(1e-3)
