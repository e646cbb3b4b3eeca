"""RQ spline slot maps: zuko equality, round trips, derivatives, the rotor symmetry, identity."""

from __future__ import annotations

import math

import pytest
import torch

from moltune.flow.coordinates import AFFINE, CIRCULAR, wrap
from moltune.flow.splines import SPLINE_BOUND, circular_rqs, n_spline_params, rqs, spline_slots

K = 8


def _raw(n: int, bins: int, width: int, scale: float = 1.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, bins * 3 + width, generator=g, dtype=torch.float64)


def test_rqs_equals_zuko():
    zuko = pytest.importorskip("zuko")
    p = _raw(4000, K, -1, scale=1.0)
    w, h, d = p[:, :K], p[:, K : 2 * K], p[:, 2 * K :]
    x = torch.linspace(-6.5, 6.5, 4000, dtype=torch.float64)  # both tails and the interior
    ref = zuko.transforms.MonotonicRQSTransform(w, h, d, bound=SPLINE_BOUND)
    y_ref, ld_ref = ref.call_and_ladj(x)
    y, ld = rqs(x, w, h, d)
    assert (y - x).abs().max() > 0.5  # the spline really moves points
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(ld, ld_ref, atol=1e-12, rtol=0)
    x_back, ld_back = rqs(y, w, h, d, inverse=True)
    torch.testing.assert_close(x_back, ref.inv(y), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(x_back, x, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ld_back, -ld, atol=1e-12, rtol=0)


def _elementwise_logdet(fn, x):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return torch.log(g)


def test_rqs_log_derivative_matches_autograd_both_directions():
    p = _raw(500, K, -1, seed=1)
    w, h, d = p[:, :K], p[:, K : 2 * K], p[:, 2 * K :]
    x = torch.linspace(-4.9, 4.9, 500, dtype=torch.float64)
    y, ld = rqs(x, w, h, d)
    torch.testing.assert_close(ld, _elementwise_logdet(lambda v: rqs(v, w, h, d)[0], x))
    _, ldi = rqs(y, w, h, d, inverse=True)
    ref = _elementwise_logdet(lambda v: rqs(v, w, h, d, inverse=True)[0], y)
    torch.testing.assert_close(ldi, ref)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_circular_round_trip_derivative_and_symmetry(k):
    p = _raw(600, K, 1, seed=k)
    w, h, d, shift = p[:, :K], p[:, K : 2 * K], p[:, 2 * K : 3 * K], p[:, -1]
    phi = torch.linspace(-math.pi, math.pi, 601, dtype=torch.float64)[:-1]
    y, ld = circular_rqs(phi, w, h, d, shift, k)
    assert wrap(y - phi).abs().max() > 0.3 / k
    assert (y >= -math.pi).all() and (y < math.pi).all()
    back, ldb = circular_rqs(y, w, h, d, shift, k, inverse=True)
    # round-off grows by up to 1 / MIN_SLOPE through the steepest bins
    torch.testing.assert_close(wrap(back - phi), torch.zeros_like(phi), atol=1e-11, rtol=0)
    torch.testing.assert_close(ldb, -ld, atol=1e-11, rtol=0)
    ref = _elementwise_logdet(lambda v: circular_rqs(v, w, h, d, shift, k)[0], phi)
    torch.testing.assert_close(ld, ref)
    ref = _elementwise_logdet(lambda v: circular_rqs(v, w, h, d, shift, k, inverse=True)[0], y)
    torch.testing.assert_close(ldb, ref)
    # rotor symmetry: turning the input by 2 pi / k turns the output by 2 pi / k
    y_turned, ld_turned = circular_rqs(phi + 2 * math.pi / k, w, h, d, shift, k)
    torch.testing.assert_close(wrap(y_turned - y - 2 * math.pi / k), torch.zeros_like(y),
                               atol=1e-12, rtol=0)  # fmt: skip
    torch.testing.assert_close(ld_turned, ld, atol=1e-12, rtol=0)


def test_circular_map_is_continuous_across_the_cut():
    p = _raw(1, K, 1, seed=7)
    w, h, d, shift = p[:, :K], p[:, K : 2 * K], p[:, 2 * K : 3 * K], p[:, -1]
    eps = 1e-7
    phi = torch.tensor([math.pi - eps, -math.pi + eps], dtype=torch.float64)
    y, ld = circular_rqs(phi, w, h, d, shift, 1)
    assert wrap(y[1] - y[0]).abs() < 1e-5  # the two sides of +-pi map next to each other
    assert (ld[1] - ld[0]).abs() < 1e-5  # equal end derivatives


def test_monotone_and_onto_the_interval():
    p = _raw(1, K, -1, seed=3)
    w, h, d = p[:, :K], p[:, K : 2 * K], p[:, 2 * K :]
    x = torch.linspace(-SPLINE_BOUND, SPLINE_BOUND, 20001, dtype=torch.float64)
    y, _ = rqs(x, w, h, d)
    assert (y.diff() > 0).all()
    torch.testing.assert_close(y[[0, -1]], x[[0, -1]], atol=1e-12, rtol=0)


def test_slots_identity_at_zero_and_round_trip():
    kind = torch.tensor([[0, 0, 0], [AFFINE, 0, 0], [AFFINE, AFFINE, CIRCULAR], [AFFINE] * 3])
    sym = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 3], [1, 1, 1]])
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 4, 3, generator=g, dtype=torch.float64)
    z = torch.where(kind == CIRCULAR, wrap(3 * z), z)
    P = n_spline_params(K)
    zero = torch.zeros(32, 4, 3, P, dtype=torch.float64)
    y0, ld0 = spline_slots(z, zero, kind, sym, K, 1.0)
    assert torch.equal(y0, z) and torch.equal(ld0, torch.zeros_like(ld0))
    params = torch.randn(32, 4, 3, P, generator=g, dtype=torch.float64)
    y, ld = spline_slots(z, params, kind, sym, K, 1.0)
    assert torch.equal(y[:, 0], z[:, 0]) and (y[:, 2:] - z[:, 2:]).abs().max() > 0.1
    zb, ldb = spline_slots(y, params, kind, sym, K, 1.0, inverse=True)
    torch.testing.assert_close(zb, z, atol=1e-11, rtol=0)
    torch.testing.assert_close(ldb, -ld, atol=1e-11, rtol=0)
