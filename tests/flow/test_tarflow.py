"""TarFlow: identity at start, exact inverse (KV cache, recompute, fixed point), log-determinant."""

from __future__ import annotations

import pytest
import torch

from moltune.flow.models import make_flow


def _flow(aa_peptide, aa_samples, representation="internal", **kw):
    torch.manual_seed(0)
    flow = make_flow("tarflow", aa_peptide.topology, representation, n_blocks=2, d_model=32,
                     n_layers=1, n_heads=2, **kw)  # fmt: skip
    flow.representation.fit(aa_samples)
    return flow


def test_identity_at_initialisation(aa_peptide, aa_samples):
    flow = _flow(aa_peptide, aa_samples)
    x = aa_samples[:8].float()
    y, ld = flow(x, 300.0, 450.0)
    assert (y - x).abs().max() < 1e-5
    assert ld.abs().max() < 1e-4
    xi, ldi = flow.inverse(x, 300.0, 450.0)
    assert (xi - x).abs().max() < 1e-5 and ldi.abs().max() < 1e-4


@pytest.mark.parametrize("representation", ["internal", "cartesian"])
def test_round_trip_float32_and_cache(aa_peptide, aa_samples, perturb, representation):
    flow = perturb(_flow(aa_peptide, aa_samples, representation), scale=0.1)
    x = aa_samples[:16].float()
    y, ld = flow(x, 300.0, 450.0)
    assert (y - x).abs().max() > 1e-3  # the perturbed map really moves atoms
    xr, ldr = flow.inverse(y, 300.0, 450.0)
    assert (xr - x).abs().max() <= 1e-5
    torch.testing.assert_close(ldr, -ld, atol=2e-3, rtol=1e-4)
    xn, ldn = flow.inverse(y, 300.0, 450.0, method="recompute")
    torch.testing.assert_close(xn, xr, atol=1e-6, rtol=0)
    torch.testing.assert_close(ldn, ldr, atol=1e-4, rtol=0)


@pytest.mark.parametrize("scale", [0.1, 1.0])
def test_fixed_point_inverse_equals_sequential(aa_peptide, aa_samples, perturb, scale):
    """Jacobi sweeps solve the same triangular system; at scale 1.0 the map is far from the
    identity (coordinates move by far more than thermal widths), so they need many sweeps."""
    flow = perturb(_flow(aa_peptide, aa_samples), scale=scale).double()
    x = aa_samples[:8]
    with torch.no_grad():
        y, ld = flow(x, 300.0, 450.0)
        assert (y - x).abs().max() > 1e-3 * scale * 10
        xs, lds = flow.inverse(y, 300.0, 450.0, method="cached")
        xf, ldf = flow.inverse(y, 300.0, 450.0)  # the default without gradients
        xr, _ = flow.inverse(y, 300.0, 450.0, method="fixed_point")
    torch.testing.assert_close(xf, xs, atol=1e-8, rtol=0)
    torch.testing.assert_close(ldf, lds, atol=1e-7, rtol=0)
    if scale < 1.0:  # at 1.0 bond angles leave (0, pi): T^-1(T(x)) != x for every method
        torch.testing.assert_close(xf, x, atol=1e-7, rtol=0)
        torch.testing.assert_close(ldf, -ld, atol=1e-7, rtol=0)
    assert torch.equal(xr, xf)
    with pytest.raises(ValueError, match="inverse method"):
        flow.inverse(y, 300.0, 450.0, method="newton")


def test_default_inverse_method_follows_batch_and_gradients(aa_peptide, aa_samples, monkeypatch):
    from moltune.flow.tarflow import FIXED_POINT_MAX_BATCH, AutoregressiveBlock

    flow = _flow(aa_peptide, aa_samples)
    used = []
    original = AutoregressiveBlock._fixed_point_inverse

    def spy(self, *a, **k):
        used.append(True)
        return original(self, *a, **k)

    monkeypatch.setattr(AutoregressiveBlock, "_fixed_point_inverse", spy)
    x = aa_samples[: FIXED_POINT_MAX_BATCH + 1].float()
    with torch.no_grad():
        flow.inverse(x[:2], 300.0, 450.0)
        assert len(used) == 2  # both blocks, a swap-sized batch
        flow.inverse(x, 300.0, 450.0)  # an evaluation-sized batch: the cache
    flow.inverse(x[:2], 300.0, 450.0)  # gradients on: the cache (differentiable, exact)
    assert len(used) == 2


@pytest.mark.parametrize("representation", ["internal", "cartesian"])
def test_logdet_matches_autograd_both_directions(
    aa_peptide, aa_samples, perturb, jacobian_logdet, representation
):
    flow = perturb(_flow(aa_peptide, aa_samples, representation), scale=0.1).double()
    x = aa_samples[:2]
    y, ld = flow(x, 300.0, 450.0)
    torch.testing.assert_close(ld, jacobian_logdet(lambda v: flow(v, 300.0, 450.0)[0], x))
    _, ld_inv = flow.inverse(y, 300.0, 450.0)
    torch.testing.assert_close(ld_inv, -ld)
    torch.testing.assert_close(
        ld_inv, jacobian_logdet(lambda v: flow.inverse(v, 300.0, 450.0)[0], y)
    )


def test_inverse_is_differentiable(aa_peptide, aa_samples, perturb):
    flow = perturb(_flow(aa_peptide, aa_samples), scale=0.1)
    x, ld = flow.inverse(aa_samples[:4].float(), 300.0, 450.0)
    (x.pow(2).sum() + ld.sum()).backward()
    grads = [p.grad for p in flow.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_conditioning_changes_the_map(aa_peptide, aa_samples, perturb):
    flow = perturb(_flow(aa_peptide, aa_samples), scale=0.1)
    x = aa_samples[:4].float()
    y1, _ = flow(x, 300.0, 450.0)
    y2, _ = flow(x, 450.0, 670.0)
    y3, _ = flow(x, torch.full((4,), 300.0), torch.full((4,), 450.0))
    assert (y1 - y2).abs().max() > 1e-4
    torch.testing.assert_close(y1, y3)  # per-sample temperatures equal the scalar form


def test_peptide_conditioning_through_atom_tokens(aa_peptide, aa_samples, perturb):
    """The same core, fed atom tokens of a different peptide, gives a different map."""
    flow = perturb(_flow(aa_peptide, aa_samples), scale=0.1)
    x = aa_samples[:4].float()
    y1, _ = flow(x, 300.0, 450.0)
    flow.representation.tokens[:, 1] = 0  # pretend every residue is of unknown type
    y2, _ = flow(x, 300.0, 450.0)
    assert (y1 - y2).abs().max() > 1e-4


def test_spline_blocks_identity_and_every_inverse(aa_peptide, aa_samples, perturb):
    """Blocks predicting RQ splines: the identity at start, then every inverse method exact."""
    flow = _flow(aa_peptide, aa_samples, spline_bins=6, per_coordinate=True).double()
    x = aa_samples[:8]
    with torch.no_grad():
        y0, ld0 = flow(x, 300.0, 450.0)
    assert (y0 - x).abs().max() < 1e-12 and ld0.abs().max() < 1e-12
    perturb(flow, scale=0.1)
    with torch.no_grad():
        y, ld = flow(x, 300.0, 450.0)
        assert (y - x).abs().max() > 1e-2
        for method in ("cached", "recompute", "fixed_point"):
            xr, ldr = flow.inverse(y, 300.0, 450.0, method=method)
            torch.testing.assert_close(xr, x, atol=1e-10, rtol=0, msg=method)
            torch.testing.assert_close(ldr, -ld, atol=1e-8, rtol=0, msg=method)
    xf, _ = flow.float().inverse(y.float(), 300.0, 450.0)  # float32 networks and coordinates
    assert (xf.double() - x).abs().max() < 1e-4


def test_spline_blocks_logdet_matches_autograd_both_directions(
    aa_peptide, aa_samples, perturb, jacobian_logdet
):
    flow = perturb(_flow(aa_peptide, aa_samples, spline_bins=6), scale=0.1).double()
    x = aa_samples[:2]
    y, ld = flow(x, 300.0, 450.0)
    torch.testing.assert_close(ld, jacobian_logdet(lambda v: flow(v, 300.0, 450.0)[0], x))
    _, ld_inv = flow.inverse(y, 300.0, 450.0)
    torch.testing.assert_close(
        ld_inv, jacobian_logdet(lambda v: flow.inverse(v, 300.0, 450.0)[0], y)
    )
