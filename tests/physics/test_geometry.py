"""Backbone dihedrals (phi, psi, omega) against an independent computation, Ramachandran pairing,
cis detection, figures."""

import numpy as np
import pytest

from moltune.common.errors import InvalidInputError
from moltune.physics.geometry import backbone_dihedrals, peptide_bond_omega, ramachandran_angles
from moltune.physics.peptide import build_peptide
from moltune.physics.plots import energy_histograms, free_energy_2d, ramachandran


def _md_topology(pep, tmp_path):
    import mdtraj

    return mdtraj.load_topology(str(pep.write_pdb(tmp_path / "p.pdb")))


def _dihedral(p0, p1, p2, p3):
    """Textbook dihedral (IUPAC sign convention), radians."""
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / np.linalg.norm(b1)
    v = b0 - np.dot(b0, b1) * b1
    w = b2 - np.dot(b2, b1) * b1
    return np.arctan2(np.dot(np.cross(b1, v), w), np.dot(v, w))


def _atom(pep, res, name):
    return next(a.index for a in pep.topology.atoms() if a.residue.index == res and a.name == name)


def test_phi_psi_match_textbook_definition(tmp_path):
    pep = build_peptide("AAA", minimize=False)  # PeptideBuilder: extended, phi -120, psi 140 deg
    top = _md_topology(pep, tmp_path)
    rng = np.random.default_rng(0)
    xyz = pep.positions_nm[None] + rng.normal(scale=0.02, size=(5, pep.n_atoms, 3))
    phi, psi, phi_res, psi_res = backbone_dihedrals(xyz, top, return_residues=True)
    assert phi.shape == (5, 2) and psi.shape == (5, 2)
    assert phi_res.tolist() == [1, 2] and psi_res.tolist() == [0, 1]
    x = xyz[3]
    q = [_atom(pep, 0, "C"), _atom(pep, 1, "N"), _atom(pep, 1, "CA"), _atom(pep, 1, "C")]
    assert phi[3, 0] == pytest.approx(_dihedral(*x[q]), abs=1e-4)
    q = [_atom(pep, 1, "N"), _atom(pep, 1, "CA"), _atom(pep, 1, "C"), _atom(pep, 2, "N")]
    assert psi[3, 1] == pytest.approx(_dihedral(*x[q]), abs=1e-4)
    phi0, psi0 = backbone_dihedrals(pep.positions_nm, top)
    np.testing.assert_allclose(np.degrees(phi0), -120.0, atol=0.5)
    np.testing.assert_allclose(np.degrees(psi0), 140.0, atol=0.5)


def _rotate_about(x, origin, axis, angle, which):
    """Rotate atoms ``which`` of x [N, 3] by ``angle`` about the line origin + t * axis."""
    k = axis / np.linalg.norm(axis)
    v = x[which] - origin
    rot = (v * np.cos(angle) + np.cross(k, v) * np.sin(angle)
           + np.outer(v @ k, k) * (1 - np.cos(angle)))  # fmt: skip
    out = x.copy()
    out[which] = rot + origin
    return out


def test_omega_and_the_cis_indicator(tmp_path):
    from moltune.flow.pt_sampler import observable_series

    pep = build_peptide("AA", minimize=False)
    top = _md_topology(pep, tmp_path)
    x = pep.positions_nm
    q = [_atom(pep, 0, "CA"), _atom(pep, 0, "C"), _atom(pep, 1, "N"), _atom(pep, 1, "CA")]
    # cis: turn everything past the C-N bond half a turn about it
    second = [a.index for a in pep.topology.atoms() if a.residue.index == 1]
    cis = _rotate_about(x, x[q[1]], x[q[2]] - x[q[1]], np.pi, second)
    omega = peptide_bond_omega(np.stack([x, cis]), top)
    assert omega.shape == (2, 1)
    assert omega[0, 0] == pytest.approx(_dihedral(*x[q]), abs=1e-4)
    assert abs(omega[0, 0]) > np.radians(170)  # PeptideBuilder builds trans
    assert abs(omega[1, 0]) < np.radians(10)
    series = observable_series(np.stack([x, cis, x]), top)
    assert series["cis_peptide"].tolist() == [0.0, 1.0, 0.0]


def test_ramachandran_pairs(tmp_path):
    aa = build_peptide("AA", minimize=False)  # phi of Ala2 with psi of Ala1
    phi, psi = ramachandran_angles(aa.positions_nm[None].repeat(3, 0), _md_topology(aa, tmp_path))
    assert phi.shape == psi.shape == (3,)
    capped = build_peptide("AA", caps=True, minimize=False)  # both alanines have phi and psi
    top = _md_topology(capped, tmp_path)
    phi, psi = ramachandran_angles(capped.positions_nm[None], top)
    assert phi.shape == (2,)
    np.testing.assert_allclose(np.degrees(phi), -120.0, atol=0.5)
    with pytest.raises(InvalidInputError, match="do not match"):
        backbone_dihedrals(np.zeros((2, 5, 3)), top)
    with pytest.raises(InvalidInputError, match="NaN"):
        backbone_dihedrals(np.full((1, top.n_atoms, 3), np.nan), top)


def test_free_energy_values():
    # 3 samples in one bin, 1 in another: free energies 0 and ln 3 (kT)
    phi = np.array([0.1, 0.1, 0.1, 2.0])
    psi = np.array([0.1, 0.1, 0.1, -2.0])
    f = free_energy_2d(phi, psi, bins=10)
    finite = np.sort(f[np.isfinite(f)])
    np.testing.assert_allclose(finite, [0.0, np.log(3.0)])
    assert np.isnan(f).sum() == 98


def test_figures_are_written(tmp_path):
    rng = np.random.default_rng(0)
    panels = {"a": (rng.uniform(-3, 3, 500), rng.uniform(-3, 3, 500)), "b": (rng.normal(size=50),
              rng.normal(size=50))}  # fmt: skip
    p1 = ramachandran(panels, tmp_path / "rama.png")
    p2 = energy_histograms({"300 K": rng.normal(-508, 15, 300), "450 K": rng.normal(-467, 21, 300)},
                           tmp_path / "u.png")  # fmt: skip
    for p in (p1, p2):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
