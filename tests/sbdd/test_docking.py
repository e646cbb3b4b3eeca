"""Vina docking scores: real receptor (3rfm, A2A + caffeine), real meeko, real Vina."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Geometry import Point3D

from moltune.sbdd import docking as dk

COMPLEXES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "complexes"
PDB = COMPLEXES / "3rfm" / "protein.pdb"
REF = COMPLEXES / "3rfm" / "ligand.sdf"

needs_data = pytest.mark.skipif(not PDB.is_file(), reason="shared complexes not available")


def _translated(mol, shift_A):
    out = Chem.Mol(mol)
    conf = out.GetConformer()
    for i in range(out.GetNumAtoms()):
        p = conf.GetAtomPosition(i)
        conf.SetAtomPosition(i, Point3D(p.x + shift_A[0], p.y + shift_A[1], p.z + shift_A[2]))
    return out


def _radical(mol):
    """Caffeine with one methyl carbon turned into a CH2 radical."""
    rw = Chem.RWMol(mol)
    atom = next(a for a in rw.GetAtoms() if a.GetSymbol() == "C" and a.GetDegree() == 1)
    atom.SetNoImplicit(True)
    atom.SetNumExplicitHs(2)
    atom.SetNumRadicalElectrons(1)
    return rw.GetMol()


def _with_element(mol, atomic_num):
    rw = Chem.RWMol(mol)
    atom = next(a for a in rw.GetAtoms() if a.GetSymbol() == "C" and a.GetDegree() == 1)
    atom.SetAtomicNum(atomic_num)
    return rw.GetMol()


# ------------------------------------------------------------------ no Vina needed


def test_box_is_centred_on_ligand_with_padding():
    xyz = np.array([[0.0, 0.0, 0.0], [4.0, 2.0, -6.0]])
    box = dk.box_around_ligand(xyz, padding_A=3.0)
    assert box.center_A == pytest.approx((2.0, 1.0, -3.0))
    assert box.size_A == pytest.approx((10.0, 8.0, 12.0))
    pts = np.array([[2.0, 1.0, -3.0], [6.9, 1.0, -3.0], [7.1, 1.0, -3.0], [9.0, 6.0, -3.0]])
    assert box.contains(pts).tolist() == [True, True, False, False]
    assert box.distance_A(pts) == pytest.approx([0.0, 0.0, 0.1, math.hypot(2.0, 1.0)])
    with pytest.raises(ValueError, match="non-finite"):
        dk.box_around_ligand(np.array([[0.0, np.nan, 0.0]]))


@needs_data
def test_unpreparable_ligands_get_reasons():
    ref = dk.read_reference_ligand(REF)
    pdbqt, molh = dk.prepare_ligand(ref)
    # caffeine: 14 heavy atoms + 10 hydrogens added with coordinates near their parents
    assert molh.GetNumAtoms() == 24 and pdbqt.count("\nATOM") == 14  # non-polar H merged
    pos = molh.GetConformer().GetPositions()
    h = [a.GetIdx() for a in molh.GetAtoms() if a.GetAtomicNum() == 1]
    parent = [molh.GetAtomWithIdx(i).GetNeighbors()[0].GetIdx() for i in h]
    assert np.linalg.norm(pos[h] - pos[parent], axis=1) == pytest.approx(1.09, abs=0.05)

    cases = {
        "radical electrons": _radical(ref),
        "element(s) Se cannot be typed": _with_element(ref, 34),
        "element(s) B cannot be typed": _with_element(ref, 5),
        "disconnected (2 fragments)": Chem.CombineMols(ref, _translated(ref, (20, 0, 0))),
        "could not be parsed": None,
    }
    five_valent = Chem.RWMol(ref)
    five_valent.GetAtomWithIdx(1).SetFormalCharge(0)
    c = next(a for a in five_valent.GetAtoms() if a.GetSymbol() == "C" and a.GetDegree() == 3)
    extra = five_valent.AddAtom(Chem.Atom(6))
    five_valent.AddBond(c.GetIdx(), extra, Chem.BondType.DOUBLE)
    five_valent.GetConformer().SetAtomPosition(extra, Point3D(0, 0, 0))
    cases["sanitisation failed"] = five_valent.GetMol()
    for reason, mol in cases.items():
        with pytest.raises(dk.LigandPreparationError, match=reason.replace("(", r"\(")
                           .replace(")", r"\)")):
            dk.prepare_ligand(mol)


# ------------------------------------------------------------------ real Vina


@pytest.fixture(scope="module")
def setup_3rfm():
    if not PDB.is_file():
        pytest.skip("shared complexes not available")
    cfg = dk.DockingConfig()
    ref = dk.read_reference_ligand(REF)
    box = dk.box_around_ligand(ref, cfg.padding_A)
    receptor = dk.prepare_receptor(PDB, box, cfg)
    mols = [
        ref,  # 0: crystal pose
        _translated(ref, (30.0, 0.0, 0.0)),  # 1: 30 Å away, outside the box
        _radical(ref),  # 2: cannot get hydrogens
        _translated(ref, (0.6, -0.4, 0.3)),  # 3: perturbed pose, in the box
        _with_element(ref, 34),  # 4: selenium, Vina cannot type it
    ]
    return cfg, box, receptor, mols


@pytest.fixture(scope="module")
def serial_results(setup_3rfm):
    cfg, box, receptor, mols = setup_3rfm
    return dk.score_molecules(mols, receptor, box, cfg, n_workers=1, progress=False)


def test_receptor_is_protonated_and_cropped(setup_3rfm):
    _, box, receptor, _ = setup_3rfm
    lines = [ln for ln in receptor.pdbqt.splitlines() if ln.startswith("ATOM")]
    types = [ln[77:].strip() for ln in lines]
    assert len(lines) == receptor.n_atoms
    # 3rfm.pdb has no hydrogens: polar ones (HD) must have been added (Ser/Thr/Tyr OH, NH).
    assert types.count("HD") > 100
    assert {"C", "A", "N", "NA", "OA", "SA", "HD"} >= set(types)
    assert receptor.cropped_residues > 100 and receptor.dropped_residues == []
    xyz = np.array([[float(ln[30:38]), float(ln[38:46]), float(ln[46:54])] for ln in lines])
    # everything within Vina's 8 Å cutoff of the box is kept, nothing beyond cutoff + residue size
    assert box.distance_A(xyz).min() == 0.0
    assert box.distance_A(xyz).max() < dk.VINA_CUTOFF_A + 2.0 + 12.0


def test_reference_caffeine_scores(serial_results):
    r = serial_results[0]
    assert r.status == "ok", r.message
    assert r.smiles == "Cn1c(=O)c2c(ncn2C)n(C)c1=O" and r.n_heavy_atoms == 14
    assert math.isfinite(r.score_only_kcalmol) and -8.0 < r.score_only_kcalmol < -2.0
    assert r.minimized_kcalmol <= r.score_only_kcalmol + 0.01
    # perturbed pose: scores worse than the crystal pose as given, minimisation recovers
    p = serial_results[3]
    assert p.status == "ok", p.message
    assert p.score_only_kcalmol > r.score_only_kcalmol + 0.2
    assert p.minimized_kcalmol < p.score_only_kcalmol - 0.2


def test_bad_molecules_are_reported_not_dropped(serial_results):
    assert [r.index for r in serial_results] == [0, 1, 2, 3, 4]
    far, radical, selenium = serial_results[1], serial_results[2], serial_results[4]
    assert far.status == "outside_box" and "outside the box" in far.message
    assert math.isnan(far.score_only_kcalmol) and math.isnan(far.minimized_kcalmol)
    assert radical.status == "skipped" and "radical" in radical.message
    assert selenium.status == "skipped" and "Se" in selenium.message
    s = dk.summarize(serial_results)
    assert (s["n_ok"], s["n_skipped"], s["n_outside_box"], s["n_error"]) == (2, 2, 1, 0)
    assert s["minimized_kcalmol"]["n"] == 2
    assert [d["index"] for d in s["not_scored"]] == [1, 2, 4]


def test_two_workers_match_one(setup_3rfm, serial_results):
    cfg, box, receptor, mols = setup_3rfm
    parallel = dk.score_molecules(mols, receptor, box, cfg, n_workers=2, progress=False)
    for a, b in zip(serial_results, parallel, strict=True):
        assert (a.index, a.status, a.message) == (b.index, b.status, b.message)
        for col in ("score_only_kcalmol", "minimized_kcalmol"):
            x, y = getattr(a, col), getattr(b, col)
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, abs=1e-6)


def test_metal_ion_is_kept_and_typed(setup_3rfm, tmp_path):
    from vina import Vina

    _, box, receptor, _ = setup_3rfm
    c = box.center_A
    pdb = (
        f"HETATM    1 ZN    ZN B 901    {c[0] + 3:8.3f}{c[1]:8.3f}{c[2]:8.3f}  1.00  0.00"
        "          ZN\n"
        f"HETATM    2 ZN    ZN B 902    {c[0] + 60:8.3f}{c[1]:8.3f}{c[2]:8.3f}  1.00  0.00"
        "          ZN\n"
    )
    _, metals, n_cropped = dk._crop_and_split(pdb, box, 10.0)
    assert [m[0] for m in metals] == ["ZN"] and n_cropped == 1
    line = dk._metal_pdbqt_line(7, metals[0][1], "ZN")
    assert line[77:79] == "Zn" and float(line[30:38]) == pytest.approx(c[0] + 3, abs=1e-3)
    path = tmp_path / "receptor_zn.pdbqt"
    path.write_text(receptor.pdbqt + line + "\n")
    Vina(verbosity=0).set_receptor(str(path))  # Vina itself must accept the line


@needs_data
def test_cli_writes_csv_and_summary(tmp_path):
    from moltune.cli.main import main

    ref = dk.read_reference_ligand(REF)
    sdf = tmp_path / "ligs.sdf"
    with Chem.SDWriter(str(sdf)) as w:
        w.write(ref)
        w.write(_translated(ref, (0.0, 30.0, 0.0)))
    out = tmp_path / "scores.csv"
    rc = main(["sbdd", "dock", str(sdf), "--pdb", str(PDB), "--ref-ligand", str(REF),
               "--out", str(out), "--no-progress"])
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["status"] for r in rows] == ["ok", "outside_box"]
    assert float(rows[0]["minimized_kcalmol"]) <= float(rows[0]["score_only_kcalmol"]) + 0.01
    assert rows[1]["score_only_kcalmol"] == "" and "outside the box" in rows[1]["message"]
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["n_ok"] == 1 and summary["n_outside_box"] == 1
    assert summary["box"]["size_A"] == pytest.approx(
        list(dk.box_around_ligand(ref, 4.0).size_A))
    assert summary["receptor"]["n_atoms"] > 1000


@pytest.mark.slow
def test_cropping_does_not_change_scores(setup_3rfm, serial_results):
    """Residues beyond Vina's cutoff cannot matter: the full receptor gives the same scores."""
    cfg, box, _, mols = setup_3rfm
    full = dk.prepare_receptor(PDB, None, cfg)
    assert full.cropped_residues == 0 and full.n_atoms > 2 * setup_3rfm[2].n_atoms
    res = dk.score_molecules(mols, full, box, cfg, n_workers=1, progress=False)
    for a, b in zip(serial_results, res, strict=True):
        assert a.status == b.status
        if a.status == "ok":
            assert a.score_only_kcalmol == pytest.approx(b.score_only_kcalmol, abs=1e-3)
            assert a.minimized_kcalmol == pytest.approx(b.minimized_kcalmol, abs=1e-3)
