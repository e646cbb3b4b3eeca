"""Peptide builder: atom counts, force-field coverage, minimisation, bad input, CLI."""

import subprocess
import sys

import numpy as np
import pytest

from moltune.common.errors import InputFileError, InvalidInputError
from moltune.physics.forcefield import create_system
from moltune.physics.peptide import THREE_LETTER, build_peptide, load_peptide, potential_energy

# Atoms of each residue inside a chain (Amber naming, pH 7: Asp/Glu/Lys/Arg charged, His = HIE).
INTERNAL_ATOMS = {
    "A": 10, "R": 24, "N": 14, "D": 12, "C": 11, "Q": 17, "E": 15, "G": 7, "H": 17, "I": 19,
    "L": 19, "K": 22, "M": 17, "F": 20, "P": 14, "S": 11, "T": 14, "W": 24, "Y": 21, "V": 16,
}  # fmt: skip


def expected_atoms(seq: str, caps: bool) -> int:
    # zwitterion: two extra H on N-terminal N (NH3+) and OXT; caps: ACE (CH3+3H, C, O) + NME (N, H, C+3H)
    return sum(INTERNAL_ATOMS[c] for c in seq) + (12 if caps else 3)


def test_reference_atom_counts():
    assert build_peptide("AA", minimize=False).n_atoms == 23
    assert build_peptide("A", caps=True, minimize=False).n_atoms == 22


# together these cover all 20 letters
@pytest.mark.parametrize(
    "seq,caps",
    [
        ("KS", False),
        ("WYP", False),
        ("HC", True),
        ("DERNQ", False),
        ("GMIL", True),
        ("VFTA", False),
    ],
)
def test_atom_counts_and_parameters(seq, caps):
    pep = build_peptide(seq, caps=caps, minimize=False)
    assert pep.n_atoms == expected_atoms(seq, caps)
    assert pep.positions_nm.shape == (pep.n_atoms, 3)
    system = create_system(pep.topology)  # raises if any atom lacks parameters
    assert system.getNumParticles() == pep.n_atoms
    names = [r.name for r in pep.topology.residues()]
    expected_names = (
        (["ACE"] if caps else []) + [THREE_LETTER[c] for c in seq] + (["NME"] if caps else [])
    )
    assert names == expected_names
    assert pep.sequence == seq


def test_histidine_is_hie():
    pep = build_peptide("H", caps=True, minimize=False)
    his = [a.name for a in pep.topology.atoms() if a.residue.name == "HIS"]
    assert "HE2" in his and "HD1" not in his


def test_minimisation_lowers_energy():
    raw = build_peptide("AK", minimize=False)
    pep = build_peptide("AK")
    u0 = potential_energy(raw.topology, raw.positions_nm)
    u1 = potential_energy(pep.topology, pep.positions_nm)
    assert np.isfinite(u1)
    assert u1 < u0 - 1.0
    # minimised AA in OBC2 is far below the MD mean at 300 K (about -508 kJ/mol)
    aa = build_peptide("AA")
    assert -650 < potential_energy(aa.topology, aa.positions_nm) < -540


@pytest.mark.parametrize(
    "seq,caps,match",
    [("AX", False, "unknown residue"), ("A1", False, "unknown residue"), ("A", False, "2 to 5"),
     ("AAAAAA", False, "2 to 5"), ("", True, "1 to 5"), ("AAAAAA", True, "1 to 5")],
)  # fmt: skip
def test_bad_sequences(seq, caps, match):
    with pytest.raises(InvalidInputError, match=match):
        build_peptide(seq, caps=caps, minimize=False)


def test_pdb_roundtrip_and_load(tmp_path):
    pep = build_peptide("SA", minimize=False)
    path = pep.write_pdb(tmp_path / "sa.pdb")
    back = load_peptide(path)
    assert back.n_atoms == pep.n_atoms and back.sequence == "SA" and not back.caps
    np.testing.assert_allclose(back.positions_nm, pep.positions_nm, atol=1e-3)
    assert (
        abs(
            potential_energy(back.topology, back.positions_nm)
            - potential_energy(pep.topology, pep.positions_nm)
        )
        < 1.0
    )
    with pytest.raises(InputFileError):
        load_peptide(tmp_path / "missing.pdb")
    (tmp_path / "broken.pdb").write_text("ATOM      1  N   ALA A   1      xxx\n")
    with pytest.raises(InvalidInputError):
        load_peptide(tmp_path / "broken.pdb")


def test_cli_build(tmp_path):
    out = tmp_path / "ala2.pdb"
    r = subprocess.run(
        [sys.executable, "-m", "moltune.cli.main", "peptide", "build", "A", "--caps", "--out",
         str(out)], check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert load_peptide(out).n_atoms == 22
    r = subprocess.run(
        [sys.executable, "-m", "moltune.cli.main", "peptide", "build", "AZ", "--out",
         str(tmp_path / "x.pdb")], check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2 and "unknown residue" in r.stderr
    assert not (tmp_path / "x.pdb").exists()


def test_build_is_deterministic_across_processes(tmp_path):
    """The same sequence gives the same atoms and coordinates in two fresh processes (PDBFixer and
    addHydrogens draw from Python's ``random``, seeded differently per process)."""
    import random

    code = (
        "import sys, numpy as np; from moltune.physics.peptide import build_peptide; "
        "p = build_peptide('AK'); np.save(sys.argv[1], p.positions_nm)"
    )
    for i in (1, 2):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{i}.npy")], check=True)
    a, b = np.load(tmp_path / "1.npy"), np.load(tmp_path / "2.npy")
    assert a.shape == (35, 3)  # AK zwitterion: ALA 10 + LYS 22 + 2 terminal H + OXT
    np.testing.assert_array_equal(a, b)
    state = random.getstate()
    build_peptide("AA", minimize=False)
    assert random.getstate() == state  # the caller's random stream is left alone
