"""OpenMMEnergy: a torch autograd function over OpenMM contexts (float64), optionally in workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moltune.common.errors import InvalidInputError
from moltune.physics.openmm_energy import OpenMMEnergy


def test_gradients_match_finite_differences(energy_test_system):
    data = energy_test_system("ACE-A-NME")
    model = OpenMMEnergy(data["system"])
    x = torch.tensor(data["x"][[0, 3]], requires_grad=True)
    u = model(x)
    assert u.shape == (2,) and u.dtype == torch.float64
    np.testing.assert_allclose(u.detach().numpy(), data["u_ref"][[0, 3]], atol=1e-9)
    weights = torch.tensor([1.0, -0.5], dtype=torch.float64)
    (g,) = torch.autograd.grad((weights * u).sum(), x)
    rng = np.random.default_rng(0)
    h = 1e-5
    for _ in range(8):
        b, a, c = rng.integers(2), rng.integers(x.shape[1]), rng.integers(3)
        xp, xm = data["x"][[0, 3]].copy(), data["x"][[0, 3]].copy()
        xp[b, a, c] += h
        xm[b, a, c] -= h
        up, _ = model.energy_and_forces(xp)
        um, _ = model.energy_and_forces(xm)
        fd = weights[b].item() * (up[b] - um[b]) / (2 * h)
        assert abs(g[b, a, c].item() - fd) < 1e-3 * max(1.0, abs(fd)), (b, a, c, fd)


def test_worker_pool_gives_the_same_numbers(energy_test_system):
    data = energy_test_system("AA")
    with OpenMMEnergy(data["topology"], solvent="obc2", n_workers=2) as pooled:
        u, f = pooled.energy_and_forces(data["x"])
        assert pooled._pool is not None  # the batch really went to the workers
        ut = pooled(torch.tensor(data["x"]))
    np.testing.assert_allclose(u, data["u_ref"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(f, data["f_ref"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(ut.numpy(), data["u_ref"], rtol=0, atol=1e-9)


def test_cpu_platform_close_to_reference(energy_test_system):
    data = energy_test_system("AA")
    u, _ = OpenMMEnergy(data["system"], platform="CPU").energy_and_forces(data["x"][:4])
    # the CPU platform computes in mixed single precision
    np.testing.assert_allclose(u, data["u_ref"][:4], rtol=1e-5, atol=1e-2)


def test_bad_inputs(energy_test_system):
    data = energy_test_system("AA")
    model = OpenMMEnergy(data["system"])
    x = data["x"][:1].copy()
    x[0, 0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        model.energy_and_forces(x)
    with pytest.raises(InvalidInputError):
        OpenMMEnergy(data["system"], platform="CUDA-please")
    # exactly overlapping atoms: OpenMM itself gives NaN/inf; we report +inf, no NaN forces
    x = data["x"][:1].copy()
    x[0, -1] = x[0, 0]
    u, f = model.energy_and_forces(x)
    assert not np.isnan(u).any() and not np.isnan(f).any()
