"""Internal and Cartesian representations: Z-matrix, exact round trip, analytic Jacobian."""

from __future__ import annotations

import math

import pytest
import torch

from moltune.flow.coordinates import (
    AFFINE,
    CIRCULAR,
    NONE,
    CartesianCoordinates,
    InternalCoordinates,
    bond_angle,
    dihedral,
    place,
)  # fmt: skip
from moltune.flow.models import PerCoordinateFlow, TransportFlow


def _names(rep, aa_peptide):
    atoms = list(aa_peptide.topology.atoms())
    return [f"{atoms[i].name}{atoms[i].residue.index + 1}" for i in rep.zmatrix.order]


def test_zmatrix_heavy_backbone_first_and_six_free_rotors(aa_peptide):
    rep = InternalCoordinates(aa_peptide.topology)
    names = _names(rep, aa_peptide)
    assert names[:3] == ["N1", "CA1", "C1"]
    assert names.index("N2") < names.index("CB1")  # backbone before side chains
    first_h = min(i for i, n in enumerate(names) if n.startswith("H"))
    assert all(not n.startswith("H") for n in names[:first_h]) and first_h == 11
    circ = {names[p]: int(rep.symmetry[p, 2]) for p in range(23) if rep.slot_kind[p, 2] == CIRCULAR}
    # psi1 (placed N2), phi2 (C2), carboxylate (2-fold), NH3 (3-fold), two methyls (3-fold)
    assert circ == {"N2": 1, "C2": 1, "O2": 2, "H1": 3, "HB11": 3, "HB12": 3}
    assert int((rep.slot_kind != NONE).sum()) == 3 * 23 - 6


def test_primitives_agree():
    g = torch.Generator().manual_seed(0)
    a, b, c = torch.randn(3, 10, 3, generator=g, dtype=torch.float64)
    r = torch.rand(10, generator=g, dtype=torch.float64) + 0.1
    theta = torch.rand(10, generator=g, dtype=torch.float64) * 2.5 + 0.3
    phi = (torch.rand(10, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    d = place(a, b, c, r, theta, phi)
    torch.testing.assert_close((d - c).norm(dim=-1), r)
    torch.testing.assert_close(bond_angle(d, c, b), theta)
    torch.testing.assert_close(dihedral(d, c, b, a), phi)


@pytest.mark.parametrize("cls", [InternalCoordinates, CartesianCoordinates])
def test_round_trip_is_exact(cls, aa_peptide, aa_samples):
    rep = cls(aa_peptide.topology).fit(aa_samples)
    z, frame, ld_enc = rep.encode(aa_samples)
    x, ld_dec = rep.decode(z, frame)
    assert (x - aa_samples).abs().max() < 1e-12
    torch.testing.assert_close(ld_enc + ld_dec, torch.zeros_like(ld_enc), atol=1e-10, rtol=0)
    # standardised affine slots: mean 0 (torsions: circular mean), std 1 on the fitted data
    aff = rep.slot_kind == AFFINE
    assert z[:, aff].mean(0).abs().max() < 1e-2
    assert (z[:, aff].std(0) - 1).abs().max() < 1e-2


def test_round_trip_float32(aa_peptide, aa_samples):
    rep = InternalCoordinates(aa_peptide.topology).fit(aa_samples)
    x32 = aa_samples.float()
    z, frame, _ = rep.encode(x32)
    x, _ = rep.decode(z, frame)
    assert x.dtype == torch.float32 and (x - x32).abs().max() < 1e-5


@pytest.mark.parametrize("cls", [InternalCoordinates, CartesianCoordinates])
def test_cartesian_logdet_matches_autograd(cls, aa_peptide, aa_samples, perturb, jacobian_logdet):
    """T = decode . f . encode with a non-trivial per-coordinate f: analytic vs autograd log|det|."""
    rep = cls(aa_peptide.topology).fit(aa_samples)
    flow = TransportFlow(rep, perturb(PerCoordinateFlow(rep.n_tokens).double(), scale=0.5))
    x = aa_samples[:3]
    y, ld = flow(x, 300.0, 450.0)
    assert (y - x).abs().max() > 1e-3  # the map is not the identity
    torch.testing.assert_close(ld, jacobian_logdet(lambda v: flow(v, 300.0, 450.0)[0], x))
    xr, ld_inv = flow.inverse(y, 300.0, 450.0)
    torch.testing.assert_close(xr, x)
    torch.testing.assert_close(ld_inv, -ld)
    torch.testing.assert_close(
        ld_inv, jacobian_logdet(lambda v: flow.inverse(v, 300.0, 450.0)[0], y)
    )


def test_frame_is_carried_through(aa_peptide, aa_samples, perturb):
    rep = InternalCoordinates(aa_peptide.topology).fit(aa_samples)
    flow = TransportFlow(rep, perturb(PerCoordinateFlow(rep.n_tokens).double(), scale=0.5))
    x = aa_samples[:4]
    y, _ = flow(x, 300.0, 450.0)
    _, (x0, e1, e2, s1), _ = rep.encode(x)
    _, (y0, f1, f2, s2), _ = rep.encode(y)
    torch.testing.assert_close(y0, x0)
    torch.testing.assert_close(f1, e1)
    torch.testing.assert_close(f2, e2)
    torch.testing.assert_close(s2, s1)


def test_relabelled_equivalent_hydrogens_share_coordinates(aa_peptide, aa_samples):
    """Swapping the labels of H2/H3 (NH3+) or HB2/HB3 only flips carried signs, not tokens."""
    rep = InternalCoordinates(aa_peptide.topology).fit(aa_samples)
    names = [(a.name, a.residue.index) for a in aa_peptide.topology.atoms()]
    perm = list(range(len(names)))
    for a, b in ((("H2", 0), ("H3", 0)), (("HB2", 1), ("HB3", 1))):
        i, j = names.index(a), names.index(b)
        perm[i], perm[j] = perm[j], perm[i]
    swapped = aa_samples[:, perm]
    z1, f1, _ = rep._raw(aa_samples)
    z2, f2, _ = rep._raw(swapped)
    # the two tokens exchange their (unstandardised) values; nothing else changes
    pos = {int(atom): p for p, atom in enumerate(rep.zmatrix.order)}
    tok = list(range(len(names)))
    for i, j in enumerate(perm):
        tok[pos[i]] = pos[j]
    torch.testing.assert_close(z1, z2[:, tok])
    assert int((f1[3] != f2[3]).sum(-1).max()) == 4  # four folded torsions changed sign
    assert int(rep.folded.sum()) == 10  # CB, HA on each CA; H2, H3 on N; HB2, HB3 on each CB
