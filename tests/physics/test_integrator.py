"""Velocities matched to LangevinMiddleIntegrator, checked against OpenMM itself.

A system of independent particles in harmonic wells as stiff as X-H bonds (w dt up to 0.75 at
1 fs): OpenMM's stationary (x, v) pairs must show the correlation the module derives, and
``langevin_middle_velocities`` must reproduce it where a Maxwell-Boltzmann draw does not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moltune.physics.integrator import (
    langevin_middle_velocities,
    mass_weighted_hessian,
    torch_gradient,
)
from moltune.physics.units import KB_KJMOL

DT_PS = 0.001
MASS_AMU = np.array([1.008, 1.008, 12.0, 16.0])
OMEGA_DT = np.array([0.45, 0.75, 0.6, 0.3])  # per particle, isotropic
K_KJMOL_NM2 = MASS_AMU * (OMEGA_DT / DT_PS) ** 2


def harmonic_energy(x: torch.Tensor) -> torch.Tensor:
    """U [B] kJ/mol of [B, 4, 3] nm: 0.5 k |x|^2 per particle."""
    k = torch.as_tensor(K_KJMOL_NM2, dtype=x.dtype)
    return 0.5 * (k[:, None] * x**2).sum((-1, -2))


def harmonic_system():
    import openmm

    system = openmm.System()
    force = openmm.CustomExternalForce("0.5*k*(x^2+y^2+z^2)")
    force.addPerParticleParameter("k")
    for i, (m, k) in enumerate(zip(MASS_AMU, K_KJMOL_NM2)):
        system.addParticle(m)
        force.addParticle(i, [k])
    system.addForce(force)
    return system


def openmm_stationary_pairs(temp_k: float, n_frames: int, stride: int, seed: int):
    """(x [F, 4, 3] nm, v [F, 4, 3] nm/ps) from a LangevinMiddle run (1 fs) after 10 ps.

    Friction 20/ps so that frames decorrelate within the stride; the stationary conditional does
    not depend on the friction (module doc)."""
    import openmm

    integ = openmm.LangevinMiddleIntegrator(temp_k, 20.0, DT_PS)
    integ.setRandomNumberSeed(seed)
    ctx = openmm.Context(harmonic_system(), integ, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(np.zeros((len(MASS_AMU), 3)))
    ctx.setVelocitiesToTemperature(temp_k, seed)
    integ.step(10_000)
    xs, vs = [], []
    for _ in range(n_frames):
        integ.step(stride)
        st = ctx.getState(getPositions=True, getVelocities=True)
        xs.append(st.getPositions(asNumpy=True)._value)
        vs.append(st.getVelocities(asNumpy=True)._value)
    return np.asarray(xs), np.asarray(vs)


def reduced_moments(x: np.ndarray, v: np.ndarray, temp_k: float):
    """Per particle: var of w x / s, cov(w x / s, v / s), var of v / s (s = sqrt(kT/m)); the
    stationary state predicts 1, w dt / 2, 1 (module doc)."""
    s = np.sqrt(KB_KJMOL * temp_k / MASS_AMU)[None, :, None]
    q = x * (OMEGA_DT / DT_PS)[None, :, None] / s
    p = v / s
    q, p = q.transpose(1, 0, 2).reshape(len(MASS_AMU), -1), p.transpose(1, 0, 2).reshape(len(MASS_AMU), -1)
    return (q**2).mean(1), (q * p).mean(1), (p**2).mean(1)


def test_hessian_of_a_harmonic_well_is_its_frequencies_squared():
    x = np.random.default_rng(0).normal(scale=0.01, size=(4, 3))
    omega2, grad = mass_weighted_hessian(torch_gradient(harmonic_energy), x, MASS_AMU)
    np.testing.assert_allclose(np.diag(omega2), np.repeat((OMEGA_DT / DT_PS) ** 2, 3), rtol=1e-6)
    assert np.abs(omega2 - np.diag(np.diag(omega2))).max() < 1e-6 * omega2.max()
    np.testing.assert_allclose(grad, (K_KJMOL_NM2[:, None] * x).ravel(), rtol=1e-12)


def test_openmm_stationary_velocities_match_the_derived_conditional():
    """OpenMM's stored velocities correlate with positions as derived, and so do ours; a
    Maxwell-Boltzmann draw on the same positions has no correlation (the bias it causes)."""
    temp = 300.0
    x, v = openmm_stationary_pairs(temp, n_frames=3000, stride=7, seed=11)
    var_q, cov_qp, var_p = reduced_moments(x, v, temp)
    expected_cov = OMEGA_DT / 2
    # 9000 samples per particle, correlated over a few frames: SE of each moment ~0.03
    np.testing.assert_allclose(var_q, 1.0, atol=0.1)
    np.testing.assert_allclose(var_p, 1.0, atol=0.1)
    np.testing.assert_allclose(cov_qp, expected_cov, atol=0.06)

    rng = np.random.default_rng(3)
    kt = KB_KJMOL * temp
    grad_fn = torch_gradient(harmonic_energy)
    ours = np.stack([langevin_middle_velocities(grad_fn, xi, MASS_AMU, kt, DT_PS, rng) for xi in x])
    _, cov_ours, var_ours = reduced_moments(x, ours, temp)
    np.testing.assert_allclose(cov_ours, expected_cov, atol=0.06)
    np.testing.assert_allclose(var_ours, 1.0, atol=0.1)
    mb = rng.standard_normal(x.shape) * np.sqrt(kt / MASS_AMU)[None, :, None]
    _, cov_mb, _ = reduced_moments(x, mb, temp)
    assert np.all(np.abs(cov_mb) < 0.06)
    assert cov_qp[1] - cov_mb[1] > 0.25  # the stiffest mode: 0.375 expected


@pytest.mark.parametrize("dt_ps", [1e-6, DT_PS])
def test_velocities_reduce_to_maxwell_boltzmann_as_dt_vanishes(dt_ps):
    """At dt -> 0 the draw is Maxwell-Boltzmann (width sqrt(kT/m), mean 0); at 1 fs the stiff
    particle's width shrinks by sqrt(1 - (w dt/2)^2) and its mean moves by dt/2 grad U / m."""
    rng = np.random.default_rng(5)
    kt = KB_KJMOL * 300.0
    x = np.full((4, 3), 0.002)
    v = np.stack([
        langevin_middle_velocities(torch_gradient(harmonic_energy), x, MASS_AMU, kt, dt_ps, rng)
        for _ in range(4000)
    ])  # fmt: skip
    width = np.sqrt(kt / MASS_AMU) * np.sqrt(1 - (OMEGA_DT * dt_ps / DT_PS / 2) ** 2)
    mean = 0.5 * dt_ps * K_KJMOL_NM2 * 0.002 / MASS_AMU
    np.testing.assert_allclose(v.std(axis=(0, 2)), width, rtol=0.04)
    assert np.all(np.abs(v.mean(axis=(0, 2)) - mean) < 4 * width / np.sqrt(12000))
