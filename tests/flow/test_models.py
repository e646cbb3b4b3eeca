"""Named flows: the identity control and the per-coordinate baseline."""

from __future__ import annotations

import pytest
import torch

from moltune.common.errors import InvalidInputError
from moltune.flow.models import IdentityFlow, PerCoordinateFlow, count_parameters, make_flow


def test_identity_flow(aa_samples):
    flow = IdentityFlow()
    y, ld = flow(aa_samples, 300.0, 450.0)
    assert torch.equal(y, aa_samples) and torch.equal(
        ld, torch.zeros(len(aa_samples), dtype=ld.dtype)
    )
    x, ld = flow.inverse(aa_samples, 300.0, 450.0)
    assert torch.equal(x, aa_samples)


def test_baseline_size_identity_and_reverse_pair(aa_peptide, aa_samples, perturb):
    flow = make_flow("baseline_ic", aa_peptide.topology)
    flow.representation.fit(aa_samples)
    core = flow.core
    assert isinstance(core, PerCoordinateFlow)
    # 57 affine coordinates x (rate, centre) + 6 rotors x (w, alpha): about 130 parameters
    assert core.n_effective_parameters(flow.representation) == 132
    x = aa_samples[:8]
    y, ld = flow(x, 300.0, 450.0)
    assert (y - x).abs().max() < 1e-10 and ld.abs().max() < 1e-10  # identity at start
    perturb(core, scale=0.3)
    y, ld = flow(x, 300.0, 450.0)
    assert (y - x).abs().max() > 1e-3
    # the same temperature on both sides is the identity; the affine part of the reverse pair
    # is the exact inverse of the forward pair
    y_same, ld_same = flow(x, 450.0, 450.0)
    assert (y_same - x).abs().max() < 1e-10 and ld_same.abs().max() < 1e-10
    xr, ldr = flow.inverse(y, 300.0, 450.0)
    assert (xr - x).abs().max() < 1e-10
    torch.testing.assert_close(ldr, -ld)


def test_baseline_runs_in_float32(aa_peptide, aa_samples, perturb):
    flow = make_flow("baseline_ic", aa_peptide.topology)
    flow.representation.fit(aa_samples)
    perturb(flow.core, scale=0.3)
    x = aa_samples[:8].float()
    y, ld = flow(x, 300.0, 450.0)
    assert y.dtype == torch.float32 and ld.dtype == torch.float32
    xr, _ = flow.inverse(y, 300.0, 450.0)
    assert (xr - x).abs().max() <= 1e-5


def test_unknown_names_are_clear_errors(aa_peptide):
    with pytest.raises(InvalidInputError, match="unknown flow"):
        make_flow("realnvp", aa_peptide.topology)
    with pytest.raises(InvalidInputError, match="unknown representation"):
        make_flow("baseline_ic", aa_peptide.topology, representation="polar")


def test_tarflow_parameter_count_scales_with_width(aa_peptide):
    small = make_flow("tarflow", aa_peptide.topology, d_model=32, n_blocks=2, n_layers=1)
    big = make_flow("tarflow", aa_peptide.topology, d_model=64, n_blocks=2, n_layers=1)
    assert 0 < count_parameters(small) < count_parameters(big)


def _check_identity_then_exact(flow, x, perturb, jacobian_logdet, scale: float) -> None:
    """Identity at start and for equal temperatures; once perturbed it moves, inverts exactly in
    float64, and its log-determinants equal autograd's in both directions."""
    y, ld = flow(x, 300.0, 450.0)
    assert (y - x).abs().max() < 1e-12 and ld.abs().max() < 1e-12
    perturb(flow.core, scale=scale)
    y, ld = flow(x, 300.0, 450.0)
    assert (y - x).abs().max() > 1e-2
    y_same, ld_same = flow(x, 450.0, 450.0)
    assert (y_same - x).abs().max() < 1e-12 and ld_same.abs().max() < 1e-12
    xr, ldr = flow.inverse(y, 300.0, 450.0)
    assert (xr - x).abs().max() < 1e-12
    torch.testing.assert_close(ldr, -ld, atol=1e-10, rtol=0)
    torch.testing.assert_close(ld[:2], jacobian_logdet(lambda v: flow(v, 300.0, 450.0)[0], x[:2]))
    ref = jacobian_logdet(lambda v: flow.inverse(v, 300.0, 450.0)[0], y[:2])
    torch.testing.assert_close(ldr[:2], ref)


def test_spline_baseline_identity_exact_inverse_and_logdet(
    aa_peptide, aa_samples, perturb, jacobian_logdet
):
    from moltune.flow.models import PerCoordinateSpline

    flow = make_flow("spline_ic", aa_peptide.topology, spline_bins=6)
    flow.representation.fit(aa_samples)
    affine, spline = flow.core.cores
    assert isinstance(affine, PerCoordinateFlow) and isinstance(spline, PerCoordinateSpline)
    assert count_parameters(spline) == 23 * 3 * (3 * 6 + 3)
    _check_identity_then_exact(flow, aa_samples[:8], perturb, jacobian_logdet, scale=0.3)


def test_spline_tarflow_puts_spline_layers_in_front(aa_peptide):
    from moltune.flow.models import PerCoordinateSpline
    from moltune.flow.tarflow import TarFlow

    flow = make_flow("tarflow", aa_peptide.topology, d_model=16, n_blocks=2, n_layers=1,
                     per_coordinate=True, spline_bins=4)  # fmt: skip
    kinds = [type(c) for c in flow.core.cores]
    assert kinds == [PerCoordinateFlow, PerCoordinateSpline, TarFlow]
    assert flow.core.cores[2].blocks[0].out.out_features == 3 * (3 * 4 + 3)


def test_spline_preset_builds_the_spline_baseline(aa_peptide):
    from moltune.common.config import load_config
    from moltune.flow.models import PerCoordinateSpline
    from moltune.flow.train import TrainConfig, build_flow

    cfg = load_config(TrainConfig, "aa_300_450_spline")
    flow = build_flow(cfg.flow, aa_peptide.topology)
    spline = flow.core.cores[1]
    assert isinstance(spline, PerCoordinateSpline) and spline.bins == cfg.flow.spline_bins == 8


def test_coupling_layers_identity_exact_inverse_logdet_and_masks(
    aa_peptide, aa_samples, perturb, jacobian_logdet
):
    from moltune.flow.coordinates import AFFINE, CIRCULAR
    from moltune.flow.models import CouplingSpline, coupling_masks

    flow = make_flow("spline_ic", aa_peptide.topology, spline_bins=4, couplings=3,
                     coupling_hidden=16)  # fmt: skip
    rep = flow.representation.fit(aa_samples)
    couplings = flow.core.cores[2:]
    assert len(couplings) == 3 and all(isinstance(c, CouplingSpline) for c in couplings)
    masks = coupling_masks(rep, 3)
    # AA zwitterion: two slow torsions (no rotor symmetry) condition; rotors never do
    slow = (rep.slot_kind == CIRCULAR) & (rep.symmetry == 1)
    assert int(slow.sum()) == 2
    assert all(bool((c & ~slow).sum() == 0) for c, _ in masks)
    # no layer moves its own conditioner; together they move every slot
    assert not any(bool((c & t).any()) for c, t in masks)
    moved = masks[0][1] | masks[1][1] | masks[2][1]
    assert torch.equal(moved, rep.slot_kind != 0)
    assert torch.equal(masks[1][1] | masks[2][1], slow) and int(masks[1][1].sum()) == 1
    assert bool((masks[0][1] & (rep.slot_kind == AFFINE)).sum() == (rep.slot_kind == AFFINE).sum())
    _check_identity_then_exact(flow, aa_samples[:8], perturb, jacobian_logdet, scale=0.05)


def test_slot_features_honour_rotor_symmetry(aa_peptide, aa_samples):
    """Turning a k-fold rotor by 2 pi / k leaves its conditioning features unchanged."""
    import math

    from moltune.flow.coordinates import CIRCULAR
    from moltune.flow.models import slot_features

    rep = make_flow("spline_ic", aa_peptide.topology).representation.fit(aa_samples)
    z, _, _ = rep.encode(aa_samples[:4])
    mask = rep.slot_kind != 0
    rotor = (rep.slot_kind == CIRCULAR) & (rep.symmetry == 3)
    assert int(rotor.sum()) == 3  # NH3+ and two methyls
    turned = torch.where(rotor, z + 2 * math.pi / rep.symmetry.to(z.dtype), z)
    f, f_t = (slot_features(v, rep.slot_kind, rep.symmetry, mask) for v in (z, turned))
    assert f.shape == (4, int(mask.sum() + (rep.slot_kind == CIRCULAR).sum()))
    torch.testing.assert_close(f, f_t, atol=1e-12, rtol=0)
    half = torch.where(rotor, z + math.pi / 3, z)  # not a symmetry: the features change
    assert (slot_features(half, rep.slot_kind, rep.symmetry, mask) - f).abs().max() > 0.5
