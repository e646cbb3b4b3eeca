"""Backbone geometry of peptides: phi/psi/omega dihedrals (radians) computed with mdtraj.

For a residue-resolved Ramachandran plot a residue needs both phi and psi.  A zwitterionic
dipeptide such as AA has only one of each (phi of residue 2, psi of residue 1); for it
``ramachandran_angles`` pairs those two backbone torsions.
"""

from __future__ import annotations

import numpy as np

from moltune.common.errors import InvalidInputError


def _trajectory(xyz_nm: np.ndarray, md_topology):
    import mdtraj

    xyz = np.asarray(xyz_nm, dtype=np.float32)
    if xyz.ndim == 2:
        xyz = xyz[None]
    if xyz.ndim != 3 or xyz.shape[1:] != (md_topology.n_atoms, 3):
        raise InvalidInputError(
            f"coordinates of shape {np.shape(xyz_nm)} do not match a topology of "
            f"{md_topology.n_atoms} atoms; expected [F, {md_topology.n_atoms}, 3] in nm"
        )
    if not np.all(np.isfinite(xyz)):
        raise InvalidInputError("coordinates contain NaN or inf")
    return mdtraj.Trajectory(xyz, md_topology)


def backbone_dihedrals(
    xyz_nm: np.ndarray, md_topology, return_residues: bool = False
) -> tuple[np.ndarray, ...]:
    """phi [F, n_phi] and psi [F, n_psi] in radians (-pi, pi] for coordinates [F, N, 3] in nm.

    With ``return_residues`` also the residue index (0-based) each phi / psi column belongs to.
    """
    import mdtraj

    traj = _trajectory(xyz_nm, md_topology)
    phi_idx, phi = mdtraj.compute_phi(traj)
    psi_idx, psi = mdtraj.compute_psi(traj)
    if not return_residues:
        return phi, psi
    atoms = list(md_topology.atoms)
    phi_res = np.array([atoms[q[2]].residue.index for q in phi_idx], dtype=int)  # CA of residue
    psi_res = np.array([atoms[q[1]].residue.index for q in psi_idx], dtype=int)
    return phi, psi, phi_res, psi_res


def peptide_bond_omega(xyz_nm: np.ndarray, md_topology) -> np.ndarray:
    """omega [F, n_bonds] in radians (-pi, pi] of every peptide bond (trans near +-pi, cis near 0).

    At the top of a PT ladder (1000 K) AA's peptide bond isomerises to cis on a ns timescale;
    a cis frame at 300 K is rarer than any phi/psi basin and the slowest thing a sampler must get
    right.
    """
    import mdtraj

    return mdtraj.compute_omega(_trajectory(xyz_nm, md_topology))[1]


def ramachandran_angles(xyz_nm: np.ndarray, md_topology) -> tuple[np.ndarray, np.ndarray]:
    """(phi, psi) pairs [F * m] for Ramachandran plots, in radians.

    Residues having both torsions contribute their own (phi_i, psi_i).  When no residue has both
    (zwitterionic dipeptides) the single phi (residue 2) is paired with the single psi (residue 1).
    """
    phi, psi, phi_res, psi_res = backbone_dihedrals(xyz_nm, md_topology, return_residues=True)
    common = sorted(set(phi_res.tolist()) & set(psi_res.tolist()))
    if common:
        i = [int(np.where(phi_res == r)[0][0]) for r in common]
        j = [int(np.where(psi_res == r)[0][0]) for r in common]
        return phi[:, i].ravel(), psi[:, j].ravel()
    if phi.shape[1] and psi.shape[1]:
        return phi[:, 0].ravel(), psi[:, -1].ravel()
    raise InvalidInputError("the topology has no backbone phi/psi dihedrals")
