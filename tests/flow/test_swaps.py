"""Swap log-acceptance: hand-computed values, identity == naive bit for bit, invalid proposals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moltune.flow.swaps import (
    acceptance_probability,
    forward_work,
    inverse_work,
    log_acceptance_flow,
    log_acceptance_naive,
    nonfinite_mask,
    propose_flow_swap,
)


def _identity_flow() -> torch.nn.Module:
    from moltune.flow.models import IdentityFlow

    return IdentityFlow()


class _Shift(torch.nn.Module):
    """T(x) = x + c (volume preserving): a non-trivial map whose log-determinant is zero."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c

    def forward(self, x, t_s, t_t):
        return x + self.c, torch.zeros(x.shape[0], dtype=x.dtype)

    def inverse(self, y, t_s, t_t):
        return y - self.c, torch.zeros(y.shape[0], dtype=y.dtype)


def _pair_energy(x: torch.Tensor) -> torch.Tensor:
    """A Lennard-Jones-like pair energy (kJ/mol) that rejects NaN input, like TorchEnergy."""
    if torch.isnan(x).any():
        raise ValueError("NaN coordinates")
    d = torch.cdist(x, x) + torch.eye(x.shape[1], dtype=x.dtype)
    s6 = (0.3 / d) ** 6
    e = 4 * 0.5 * (s6 * s6 - s6)
    e = e - torch.diag_embed(torch.diagonal(e, dim1=-2, dim2=-1))
    return 0.5 * e.sum(dim=(-1, -2))


def test_hand_computed_flow_swap():
    b_i, b_j = 0.4, 0.25
    # D = -0.4*(-95) - 0.25*(-90) + 0.4*(-100) + 0.25*(-80) + 1.5 - 0.5 = 1.5
    d = log_acceptance_flow(-100.0, -80.0, -90.0, -95.0, 1.5, -0.5, b_i, b_j)
    assert d == pytest.approx(1.5, abs=1e-12)
    assert acceptance_probability(d) == 1.0
    # the same pair with worse proposals: D = -0.4*(-70) - 0.25*(-60) - 40 - 20 + 0 + 0 = -17
    d2 = log_acceptance_flow(-100.0, -80.0, -60.0, -70.0, 0.0, 0.0, b_i, b_j)
    assert d2 == pytest.approx(-17.0, abs=1e-12)
    assert acceptance_probability(d2) == pytest.approx(math.exp(-17.0), rel=1e-12)


def test_hand_computed_naive_swap():
    # D = (b_i - b_j)(U(x) - U(y)) = 0.15 * (-20) = -3
    d = log_acceptance_naive(-100.0, -80.0, 0.4, 0.25)
    assert d == pytest.approx(-3.0, abs=1e-12)
    assert acceptance_probability(d) == pytest.approx(math.exp(-3.0), rel=1e-12)
    # the reverse situation (hot replica lower in energy) is always accepted
    assert acceptance_probability(log_acceptance_naive(-80.0, -100.0, 0.4, 0.25)) == 1.0


def test_works_decompose_log_acceptance():
    rng = np.random.default_rng(1)
    u_x, u_y, u_tx, u_ti = rng.normal(-50, 10, (4, 100))
    ld_f, ld_i = rng.normal(0, 2, (2, 100))
    d = log_acceptance_flow(u_x, u_y, u_tx, u_ti, ld_f, ld_i, 0.4, 0.27)
    wf = forward_work(u_x, u_tx, ld_f, 0.4, 0.27)
    wr = inverse_work(u_y, u_ti, ld_i, 0.4, 0.27)
    np.testing.assert_allclose(d, -(wf + wr), rtol=0, atol=1e-10)


def test_nonfinite_terms_are_rejected_and_counted():
    u_tx = np.array([-90.0, np.inf, np.nan, -np.inf, -90.0, -90.0])
    ld_f = np.array([0.0, 0.0, 0.0, 0.0, np.nan, 0.0])
    u_ti = np.array([-95.0, -95.0, -95.0, -95.0, -95.0, np.inf])
    d = log_acceptance_flow(-100.0, -80.0, u_tx, u_ti, ld_f, 0.0, 0.4, 0.25)
    acc = acceptance_probability(d)
    assert acc[0] == 1.0  # D = 0.5 + ... finite and positive
    np.testing.assert_array_equal(acc[1:], 0.0)  # -inf energy would otherwise give D = +inf
    np.testing.assert_array_equal(
        nonfinite_mask(-100.0, -80.0, u_tx, u_ti, ld_f, 0.0), [0, 1, 1, 1, 1, 1]
    )
    assert np.isinf(forward_work(-100.0, u_tx, ld_f, 0.4, 0.25)[1:5]).all()
    assert acceptance_probability(np.nan) == 0.0


def test_torch_inputs_accepted_in_float64():
    u = torch.tensor([-100.0, -80.0], dtype=torch.float32)
    d = log_acceptance_naive(u[:1], u[1:], torch.tensor(0.4), 0.25)
    assert d.dtype == np.float64
    assert d[0] == pytest.approx(0.15 * -20.0, rel=1e-6)


def _lattice(n_frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.stack(torch.meshgrid(*[torch.arange(2.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return (0.36 * base + 0.02 * torch.randn(n_frames, 8, 3, generator=g)).double()


def test_identity_flow_reproduces_naive_acceptance_exactly():
    x, y = _lattice(64, 0), _lattice(64, 1) * 1.02
    b_i, b_j = 1 / (0.0083144626 * 300), 1 / (0.0083144626 * 450)
    prop = propose_flow_swap(_identity_flow(), _pair_energy, x, y, 300.0, 450.0, b_i, b_j)
    naive = log_acceptance_naive(prop.u_x, prop.u_y, b_i, b_j)
    assert np.array_equal(prop.log_alpha, naive)
    assert np.array_equal(prop.acceptance, acceptance_probability(naive))
    assert 0.0 < prop.acceptance.mean() < 1.0  # a real test: some swaps are rejected
    assert torch.equal(prop.x_to_i, y) and torch.equal(prop.y_to_j, x)


def test_flow_swap_uses_transformed_energies():
    x, y = _lattice(16, 2), _lattice(16, 3)
    prop = propose_flow_swap(_Shift(0.01), _pair_energy, x, y, 300.0, 450.0, 0.4, 0.27)
    u_tx = _pair_energy(x + 0.01).numpy()  # translation-invariant energy: U(T(x)) = U(x)
    np.testing.assert_allclose(prop.u_tx, u_tx)
    np.testing.assert_allclose(prop.log_alpha, log_acceptance_naive(prop.u_x, prop.u_y, 0.4, 0.27))


class _Breaks(torch.nn.Module):
    """Identity except that frame 0 comes out NaN in both directions."""

    def forward(self, x, t_s, t_t):
        y = x.clone()
        y[0] = float("nan")
        return y, torch.zeros(x.shape[0], dtype=x.dtype)

    def inverse(self, y, t_s, t_t):
        return self.forward(y, t_s, t_t)


def test_nan_coordinates_from_flow_give_rejected_swaps():
    x, y = _lattice(8, 4), _lattice(8, 5)
    prop = propose_flow_swap(_Breaks(), _pair_energy, x, y, 300.0, 450.0, 0.4, 0.27)
    assert prop.nonfinite.tolist() == [True] + [False] * 7
    assert prop.acceptance[0] == 0.0 and np.isneginf(prop.log_alpha[0])
    assert np.isfinite(prop.log_alpha[1:]).all()
