"""Peptides from their one-letter sequence: all-atom, protonated, minimised with the project force field.

How a peptide is built (existing tools only, no hand-written geometry):

1. PeptideBuilder places the heavy atoms of an extended chain (standard bond geometry).
2. With ``caps=True`` the chain is built with one extra glycine at each end; the first is trimmed
   to an acetyl cap (ACE: CH3, C, O) and the last to an N-methyl amide cap (NME: N, C).
   Without caps PDBFixer adds the terminal OXT so the C-terminus is a carboxylate.
3. OpenMM ``Modeller.addHydrogens`` (pH 7, with the Amber14 force field's templates) adds every
   hydrogen: zwitterionic termini (NH3+ / COO-) by default, charged Lys/Arg/Asp/Glu.
   Histidine is always the neutral N-epsilon tautomer **HIE** (the usual choice in the absence of
   structural information; the atom count of His-containing peptides depends on this choice).
4. L-BFGS minimisation with ``moltune.physics.forcefield.create_system`` (Amber14 + OBC2 by default).

Coordinates are in nm, energies in kJ/mol.  Zwitterionic peptides have 2-5 residues ("AA" has 23
atoms); capped peptides 1-5 residues (ACE-ALA-NME has 22 atoms).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openmm
from openmm import app, unit

from moltune.common.errors import InvalidInputError, check_pdb_file
from moltune.common.io import write_text

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
THREE_LETTER = {
    "A": "ALA", "C": "CYS", "D": "ASP", "E": "GLU", "F": "PHE", "G": "GLY", "H": "HIS",
    "I": "ILE", "K": "LYS", "L": "LEU", "M": "MET", "N": "ASN", "P": "PRO", "Q": "GLN",
    "R": "ARG", "S": "SER", "T": "THR", "V": "VAL", "W": "TRP", "Y": "TYR",
}  # fmt: skip
ONE_LETTER = {v: k for k, v in THREE_LETTER.items()} | {"HIE": "H", "HID": "H", "HIP": "H"}
HISTIDINE_VARIANT = "HIE"
LENGTHS = {False: (2, 5), True: (1, 5)}  # caps -> (min, max) residues
CAP_RESIDUES = ("ACE", "NME")


@dataclass
class Peptide:
    """An all-atom peptide: OpenMM topology and coordinates in nm ([N, 3] float64)."""

    topology: app.Topology
    positions_nm: np.ndarray
    sequence: str
    caps: bool

    @property
    def n_atoms(self) -> int:
        return self.topology.getNumAtoms()

    def pdb_string(self) -> str:
        buf = io.StringIO()
        app.PDBFile.writeFile(self.topology, self.positions_nm * unit.nanometer, buf, keepIds=False)
        return buf.getvalue()

    def write_pdb(self, path: str | Path) -> Path:
        """Write the peptide as PDB (atomically)."""
        return write_text(path, self.pdb_string())


def validate_sequence(sequence: str, caps: bool = False) -> str:
    """Upper-cased sequence, or InvalidInputError saying what is wrong with it."""
    if not isinstance(sequence, str):
        raise InvalidInputError(f"peptide sequence must be a string, got {type(sequence).__name__}")
    seq = sequence.strip().upper()
    bad = sorted({c for c in seq if c not in AMINO_ACIDS})
    if bad:
        raise InvalidInputError(
            f"unknown residue letter(s) {', '.join(repr(c) for c in bad)} in {sequence!r}; "
            f"use the one-letter codes of the 20 standard amino acids ({AMINO_ACIDS})"
        )
    lo, hi = LENGTHS[bool(caps)]
    if not lo <= len(seq) <= hi:
        kind = "capped (ACE/NME)" if caps else "zwitterionic"
        raise InvalidInputError(
            f"{kind} peptides have {lo} to {hi} residues; {sequence!r} has {len(seq)}"
        )
    return seq


def _heavy_atom_pdb(seq: str, caps: bool) -> str:
    """PDB text of the heavy atoms of an extended chain built by PeptideBuilder (ACE/NME trimmed)."""
    import PeptideBuilder
    from Bio.PDB import PDBIO
    from PeptideBuilder import Geometry

    chain_seq = f"G{seq}G" if caps else seq
    structure = PeptideBuilder.make_structure_from_geos([Geometry.geometry(c) for c in chain_seq])
    if caps:
        residues = list(structure[0]["A"])
        _trim(residues[0], keep={"CA": "CH3", "C": "C", "O": "O"}, resname="ACE")
        _trim(residues[-1], keep={"N": "N", "CA": "C"}, resname="NME")
    out = io.StringIO()
    pdbio = PDBIO()
    pdbio.set_structure(structure)
    pdbio.save(out)
    return out.getvalue()


def _trim(residue, keep: dict[str, str], resname: str) -> None:
    """Reduce a Bio.PDB glycine to a cap: keep/rename the atoms in ``keep``, drop the rest."""
    for atom in list(residue):
        if atom.get_id() not in keep:
            residue.detach_child(atom.get_id())
    for atom in list(residue):
        new = keep[atom.get_id()]
        residue.detach_child(atom.get_id())
        atom.id = atom.name = new
        atom.fullname = f" {new:<3}" if len(new) < 4 else new
        residue.add(atom)
    residue.resname = resname


def _protonate(pdb_text: str, caps: bool, solvent: str) -> tuple[app.Topology, np.ndarray]:
    """PDBFixer (missing atoms, OXT) then hydrogens at pH 7; deterministic.

    PDBFixer and ``Modeller.addHydrogens`` start new atoms at positions drawn from Python's global
    ``random`` (seeded differently in every process), so the same sequence built in two processes
    differed (sibling hydrogens swapped, up to 0.17 nm). Both run here under a fixed seed, on the
    Reference platform, and the caller's ``random`` state is restored afterwards.
    """
    import random

    state = random.getstate()
    random.seed(0)
    try:
        return _protonate_seeded(pdb_text, caps, solvent)
    finally:
        random.setstate(state)


def _protonate_seeded(pdb_text: str, caps: bool, solvent: str) -> tuple[app.Topology, np.ndarray]:
    from pdbfixer import PDBFixer

    from moltune.physics.forcefield import forcefield

    fixer = PDBFixer(pdbfile=io.StringIO(pdb_text))
    fixer.missingResidues = {}
    fixer.findMissingAtoms()
    if caps:  # the caps are complete; PDBFixer must not treat them as truncated residues
        fixer.missingTerminals = {}
    fixer.addMissingAtoms()
    modeller = app.Modeller(fixer.topology, fixer.positions)
    variants = [
        HISTIDINE_VARIANT if r.name == "HIS" else None for r in modeller.topology.residues()
    ]
    modeller.addHydrogens(
        forcefield(solvent), pH=7.0, variants=variants,
        platform=openmm.Platform.getPlatformByName("Reference"),
    )  # fmt: skip
    pos = np.asarray(modeller.positions.value_in_unit(unit.nanometer), dtype=np.float64)
    return modeller.topology, pos


def potential_energy(
    topology: app.Topology, positions_nm: np.ndarray, solvent: str = "obc2"
) -> float:
    """Potential energy in kJ/mol of one configuration (OpenMM Reference platform)."""
    from moltune.physics.forcefield import create_system

    system = create_system(topology, solvent)
    ctx = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    ctx.setPositions(positions_nm)
    return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def minimize(
    topology: app.Topology, positions_nm: np.ndarray, solvent: str = "obc2", tolerance: float = 1.0
) -> np.ndarray:
    """L-BFGS minimisation with the project force field; returns positions in nm.

    ``tolerance`` is the RMS force convergence criterion in kJ/mol/nm.
    """
    from moltune.physics.forcefield import create_system

    system = create_system(topology, solvent)
    ctx = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    ctx.setPositions(positions_nm)
    openmm.LocalEnergyMinimizer.minimize(ctx, tolerance, 0)
    state = ctx.getState(getPositions=True, getEnergy=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    if not math.isfinite(energy):
        raise InvalidInputError(
            "minimisation produced a non-finite energy; the structure is broken"
        )
    return np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), np.float64)


def build_peptide(
    sequence: str, caps: bool = False, minimize: bool = True, solvent: str = "obc2"
) -> Peptide:
    """Build ``sequence`` (one-letter codes) with all hydrogens; minimised unless ``minimize=False``.

    Zwitterionic termini by default (2-5 residues); ``caps=True`` gives ACE/NME caps (1-5 residues).
    Raises InvalidInputError for an unknown letter, a wrong length or an unbuildable sequence.
    """
    seq = validate_sequence(sequence, caps)
    try:
        topology, pos = _protonate(_heavy_atom_pdb(seq, caps), caps, solvent)
        from moltune.physics.forcefield import create_system

        create_system(topology, solvent)  # every atom must have parameters
    except InvalidInputError:
        raise
    except Exception as exc:  # PeptideBuilder / PDBFixer / template matching failures
        raise InvalidInputError(f"cannot build peptide {seq!r} (caps={caps}): {exc}") from exc
    if minimize:
        pos = globals()["minimize"](topology, pos, solvent)
    return Peptide(topology=topology, positions_nm=pos, sequence=seq, caps=bool(caps))


def read_pdb(path: str | Path) -> app.PDBFile:
    """The one PDB reader of moltune.physics: OpenMM's, with one clear error for a missing,
    empty, non-PDB or broken file, no atoms, or non-finite coordinates."""
    path = check_pdb_file(path)
    try:
        pdb = app.PDBFile(str(path))
    except Exception as exc:
        raise InvalidInputError(f"cannot read PDB file {path}: {type(exc).__name__}: {exc}") from exc
    if pdb.topology.getNumAtoms() == 0:
        raise InvalidInputError(f"PDB file {path} holds no atoms")
    if not np.all(np.isfinite(pdb.getPositions(asNumpy=True)._value)):
        raise InvalidInputError(f"PDB file {path} has non-finite coordinates")
    return pdb


def peptide_from_pdb(path: str | Path) -> Peptide:
    """Read a peptide PDB (e.g. one written by ``moltune peptide build``)."""
    pdb = read_pdb(path)
    pos = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer), np.float64)
    names = [r.name for r in pdb.topology.residues()]
    caps = any(n in CAP_RESIDUES for n in names)
    seq = "".join(ONE_LETTER.get(n, "X") for n in names if n not in CAP_RESIDUES)
    return Peptide(topology=pdb.topology, positions_nm=pos, sequence=seq, caps=caps)


def load_peptide(spec: str | Path, solvent: str = "obc2") -> Peptide:
    """A peptide from a one-letter sequence ("AA", built and minimised) or from a PDB path."""
    s = str(spec)
    if s.lower().endswith(".pdb") or Path(s).is_file() or "/" in s:
        return peptide_from_pdb(s)
    return build_peptide(s, caps=False, minimize=True, solvent=solvent)
