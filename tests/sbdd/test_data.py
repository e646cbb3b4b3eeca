"""Pockets, ligands and the DiffSBDD data layout, checked against the shared fixture and data."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from moltune.common.errors import InvalidInputError
from moltune.sbdd import data
from moltune.sbdd.vocab import ELEMENTS

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
FIXTURE = SHARED / "fixtures" / "diffsbdd" / "golden_io.pt"
COMPLEXES = SHARED / "data" / "complexes"


@pytest.fixture(scope="module")
def golden() -> dict:
    if not FIXTURE.is_file():
        pytest.skip("shared DiffSBDD fixture not available")
    import torch

    return torch.load(FIXTURE, weights_only=True)


def _need_complexes() -> None:
    if not COMPLEXES.is_dir():
        pytest.skip("shared complexes not available")


# ------------------------------------------------------------------------------------------
# The fixture's pocket
# ------------------------------------------------------------------------------------------
def test_pocket_3rfm_reproduces_fixture(golden):
    _need_complexes()
    cx = golden["complex"]
    d = COMPLEXES / "3rfm"
    pocket = data.pocket_from_pdb(d / "protein.pdb", d / "ligand.sdf")
    assert pocket.n_residues == 36 and pocket.n_atoms == 286
    assert Counter(pocket.elements) == {"C": 194, "O": 46, "N": 43, "S": 3}
    assert pocket.residue_ids == cx["pocket_residues"]
    assert pocket.atom_names == cx["pocket_atom_names"]
    assert pocket.elements == cx["pocket_atom_elements"]
    assert [f"{pocket.residue_ids[i]}:{pocket.residue_names[i]}"
            for i in pocket.atom_residue_index] == cx["pocket_atom_residue"]
    assert pocket.one_hot.shape == (286, 10) and pocket.one_hot.dtype == np.float32
    assert np.array_equal(pocket.one_hot, cx["pocket_one_hot"].numpy())
    assert pocket.coords_A.dtype == np.float64
    assert np.array_equal(pocket.coords_A, cx["pocket_coords_pdb_frame"].numpy().astype(np.float64))
    assert len(pocket.sequence) == 36 and pocket.sequence[0] == "Y"  # A:9 TYR
    assert pocket.pocket_id == "3rfm"
    assert list(cx["atom_decoder"]) == list(ELEMENTS)

    ligand = data.ligand_from_sdf(d / "ligand.sdf")
    assert ligand.elements == cx["ligand_atom_symbols"]
    assert np.array_equal(ligand.one_hot, cx["ligand_one_hot"].numpy())
    assert np.allclose(ligand.coords_A, cx["ligand_coords_sdf_frame"].numpy(), atol=0, rtol=0)

    # the batch the loss receives: element 0 centred on the mean of ligand and pocket atoms
    batch = golden["batch_single"]
    mean = np.concatenate([ligand.coords_A, pocket.coords_A]).mean(0)
    assert np.abs((pocket.coords_A - mean) - batch["pocket_coords"].numpy()).max() < 2e-6
    assert np.abs((ligand.coords_A - mean) - batch["lig_coords"].numpy()).max() < 2e-6
    assert np.array_equal(pocket.one_hot, batch["pocket_one_hot"].numpy())
    assert np.array_equal(ligand.one_hot, batch["lig_one_hot"].numpy())


def test_pocket_from_residue_list(golden):
    _need_complexes()
    d = COMPLEXES / "3rfm"
    res = golden["complex"]["pocket_residues"]
    pocket = data.pocket_from_pdb(d / "protein.pdb", resi_list=" ".join(res))
    assert pocket.residue_ids == res and pocket.n_atoms == 286
    with pytest.raises(InvalidInputError, match="B:9999"):
        data.pocket_from_pdb(d / "protein.pdb", resi_list=["A:9", "B:9999"])
    with pytest.raises(InvalidInputError, match="exactly one"):
        data.pocket_from_pdb(d / "protein.pdb")


def _atom(serial, name, resname, chain, resnum, xyz, element, altloc=" ", occ=1.0, het=False):
    label = f" {name:<3}" if len(name) < 4 else name
    rec = "HETATM" if het else "ATOM  "
    return (f"{rec}{serial:5d} {label}{altloc}{resname:>3} {chain}{resnum:4d}    "
            f"{xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}{occ:6.2f} 20.00          {element:>2}")


def test_pocket_rules_cutoff_hydrogens_altlocs_hetero(tmp_path):
    """Strict < cutoff; hydrogens take part in the test but are not kept; the higher-occupancy
    alternate location is used; water and non-standard residues are never pocket residues."""
    lines = [
        # ALA 1: heavy atoms beyond 8 Å, one hydrogen at 7.9 Å -> in the pocket
        _atom(1, "N", "ALA", "A", 1, (9.0, 1.0, 0.0), "N"),
        _atom(2, "CA", "ALA", "A", 1, (9.5, 0.0, 0.0), "C"),
        _atom(3, "H", "ALA", "A", 1, (7.9, 0.0, 0.0), "H"),
        _atom(4, "C", "ALA", "A", 1, (10.5, 0.0, 0.0), "C"),
        # GLY 2: nearest atom at exactly 8.000 Å -> not in the pocket
        _atom(5, "N", "GLY", "A", 2, (0.0, 8.0, 0.0), "N"),
        _atom(6, "CA", "GLY", "A", 2, (0.0, 9.0, 0.0), "C"),
        # SER 3: OG altloc A far (occupancy 0.4), altloc B near (0.6) -> in, with B's position
        _atom(7, "N", "SER", "A", 3, (0.0, 0.0, 12.0), "N"),
        _atom(8, "CA", "SER", "A", 3, (0.0, 0.0, 11.0), "C"),
        _atom(9, "OG", "SER", "A", 3, (0.0, 0.0, 20.0), "O", altloc="A", occ=0.4),
        _atom(10, "OG", "SER", "A", 3, (0.0, 0.0, 5.0), "O", altloc="B", occ=0.6),
        # water and selenomethionine right next to the ligand -> never pocket residues
        _atom(11, "O", "HOH", "A", 4, (1.0, 0.0, 0.0), "O", het=True),
        _atom(12, "SE", "MSE", "A", 5, (0.0, 1.5, 0.0), "SE", het=True),
        "END",
    ]
    pdb = tmp_path / "toy.pdb"
    pdb.write_text("\n".join(lines) + "\n")
    pocket = data.pocket_from_pdb(pdb, ligand_coords_A=np.zeros((1, 3)))
    assert pocket.residue_ids == ["A:1", "A:3"]
    assert pocket.sequence == "AS"
    assert pocket.atom_names == ["N", "CA", "C", "N", "CA", "OG"]
    assert pocket.elements == ["N", "C", "C", "N", "C", "O"]
    assert np.allclose(pocket.coords_A[-1], [0.0, 0.0, 5.0])
    # a slightly larger cutoff takes GLY 2 in
    assert "A:2" in data.pocket_from_pdb(pdb, ligand_coords_A=np.zeros((1, 3)),
                                         cutoff_A=8.001).residue_ids
    with pytest.raises(InvalidInputError, match="no standard residue"):
        data.pocket_from_pdb(pdb, ligand_coords_A=np.full((1, 3), 100.0))
    with pytest.raises(InvalidInputError, match="non-finite"):
        data.pocket_from_pdb(pdb, ligand_coords_A=np.full((1, 3), np.nan))


def test_ligand_far_from_protein_is_rejected():
    _need_complexes()
    cx = data.Complex("5ndu", COMPLEXES / "5ndu" / "protein.pdb", COMPLEXES / "5ndu" / "ligand.sdf")
    ok = data.process_complex(cx)  # 84 % of its atoms touch the pocket
    assert 0.8 < ok.contact_fraction < 0.9
    with pytest.raises(InvalidInputError, match="far from the protein"):
        data.process_complex(cx, min_contact_fraction=0.9)


def test_split_groups_keeps_groups_whole():
    groups = [["a", "b"], ["c"], ["d"], ["e", "f", "g"], ["h"], ["i"], ["j"]]
    for seed in range(5):
        split = data.split_groups(groups, val_fraction=0.2, seed=seed)
        assert set(split) == set("abcdefghij")
        for g in groups:
            assert len({split[i] for i in g}) == 1
        assert sum(v == "val" for v in split.values()) >= 2
        assert sum(v == "train" for v in split.values()) >= 5
    assert data.split_groups(groups, seed=1) == data.split_groups(groups, seed=1)
    # never an empty train set
    assert "train" in data.split_groups([["a"], ["b"]], val_fraction=0.9).values()


# ------------------------------------------------------------------------------------------
# Processing the shared complexes (plus deliberately bad ones)
# ------------------------------------------------------------------------------------------
BAD = {"zz_broken": "no ATOM or HETATM records", "zz_far": "no standard residue", "zz_missing": "no ligand SDF",
       "zz_unknown_element": "not in the vocabulary"}


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    _need_complexes()
    from rdkit import Chem

    src = tmp_path_factory.mktemp("complexes")
    real = sorted(p.name for p in COMPLEXES.iterdir() if (p / "protein.pdb").is_file())
    for name in real:
        os.symlink((COMPLEXES / name).resolve(), src / name)
    ref = COMPLEXES / "3rfm"
    (src / "zz_broken").mkdir()
    (src / "zz_broken" / "protein.pdb").write_text("this is not a PDB file\n")
    shutil.copy(ref / "ligand.sdf", src / "zz_broken" / "ligand.sdf")
    (src / "zz_missing").mkdir()
    shutil.copy(ref / "protein.pdb", src / "zz_missing" / "protein.pdb")
    mol = Chem.MolFromMolFile(str(ref / "ligand.sdf"))
    for name, edit in (("zz_far", "far"), ("zz_unknown_element", "si")):
        m = Chem.RWMol(mol)
        if edit == "si":
            m.GetAtomWithIdx(1).SetAtomicNum(14)
        else:
            conf = m.GetConformer()
            for i in range(m.GetNumAtoms()):
                p = conf.GetAtomPosition(i)
                conf.SetAtomPosition(i, (p.x + 150.0, p.y, p.z))
        (src / name).mkdir()
        (src / name / "ligand.sdf").write_text(Chem.MolToMolBlock(m, kekulize=False))
        os.symlink((ref / "protein.pdb").resolve(), src / name / "protein.pdb")
    out = tmp_path_factory.mktemp("processed")
    summary = data.process_complexes(src, out, val_fraction=0.2, seed=0, progress=False)
    return {"src": src, "out": out, "summary": summary, "real": real}


def test_every_complex_accounted_for(processed):
    out, summary, real = processed["out"], processed["summary"], processed["real"]
    skipped = json.loads((out / "skipped.json").read_text())
    skipped_ids = {s["id"]: s["reason"] for s in skipped}
    done = {i for ids in summary["splits"].values() for i in ids}
    assert len(real) == 19
    assert done == set(real)  # every real complex is processed ...
    assert set(skipped_ids) == set(BAD)  # ... and every bad one skipped, with its reason
    for name, word in BAD.items():
        assert word in skipped_ids[name], (name, skipped_ids[name])
    assert summary["n_processed"] == 19 and summary["n_skipped"] == 4


def test_npz_layout(processed):
    out, summary = processed["out"], processed["summary"]
    with open(COMPLEXES / "MANIFEST.csv") as fh:
        manifest = {r["id"]: int(r["n_ligand_heavy_atoms"]) for r in csv.DictReader(fh)}
    seen = []
    for split in ("train", "val"):
        with np.load(out / f"{split}.npz") as f:
            assert sorted(f.files) == sorted(data.NPZ_KEYS)
            names = [str(n) for n in f["names"]]
            assert names == summary["splits"][split]
            n_lig, n_poc = len(f["lig_coords"]), len(f["pocket_coords"])
            assert f["lig_coords"].shape == (n_lig, 3) and f["lig_coords"].dtype == np.float64
            assert f["pocket_coords"].shape == (n_poc, 3) and f["pocket_coords"].dtype == np.float32
            for key, n in (("lig_one_hot", n_lig), ("pocket_one_hot", n_poc)):
                oh = f[key]
                assert oh.shape == (n, 10) and oh.dtype == np.float32
                assert np.all(oh.sum(1) == 1) and set(np.unique(oh)) <= {0.0, 1.0}
            for key, n in (("lig_mask", n_lig), ("pocket_mask", n_poc)):
                mask = f[key]
                assert mask.shape == (n,) and mask.dtype == np.int64
                assert np.all(np.diff(mask) >= 0) and set(mask) == set(range(len(names)))
            counts = np.bincount(f["lig_mask"])
            for i, name in enumerate(names):
                assert counts[i] == manifest[name]
            if "3rfm" in names:
                i = names.index("3rfm")
                pocket = f["pocket_coords"][f["pocket_mask"] == i]
                assert pocket.shape == (286, 3)
            seen += names
    assert sorted(seen) == sorted(manifest)
    hist = np.load(out / "size_distribution.npy")
    train = summary["splits"]["train"]
    assert hist.shape[0] == max(manifest[i] for i in train) + 1
    # Gaussian smoothing in constant mode (as DiffSBDD does) loses a little mass at the edges
    assert 0.9 * len(train) < hist.sum() <= len(train)
    raw = data.joint_size_histogram([manifest[i] for i in train],
                                    [summary["per_complex"][i]["n_pocket_atoms"] for i in train],
                                    smooth_sigma=None)
    first = train[0]
    assert raw.sum() == len(train)
    assert raw[manifest[first], summary["per_complex"][first]["n_pocket_atoms"]] >= 1
    assert len(np.load(out / "train_smiles.npy")) == len(train)


def test_split_by_protein(processed):
    out, summary = processed["out"], processed["summary"]
    split = json.loads((out / "split.json").read_text())
    assignment = split["assignment"]
    assert assignment["1fbh"] == assignment["3fbp"]
    assert ["1fbh", "3fbp"] in split["groups"]
    for group in split["groups"]:
        assert len({assignment[i] for i in group}) == 1
    assert len(summary["splits"]["val"]) >= 2
    assert len(summary["splits"]["train"]) >= 12
    assert not set(summary["splits"]["train"]) & set(summary["splits"]["val"])
    for cid in summary["splits"]["val"]:
        for ext in ("pdb", "sdf", "txt"):
            assert (out / "val" / f"{cid}.{ext}").is_file()
    txt = (out / "val" / f"{summary['splits']['val'][0]}.txt").read_text().split()
    assert all(":" in r for r in txt)


def test_embeddings_written_per_pocket(processed):
    out, summary = processed["out"], processed["summary"]
    from moltune.sbdd.embeddings import make_provider

    embs = {}
    for cid in summary["per_complex"]:
        e = np.load(out / "embeddings" / f"{cid}.npy")
        assert e.shape == (960,) and e.dtype == np.float32 and np.all(np.isfinite(e))
        embs[cid] = e
    assert len({e.tobytes() for e in embs.values()}) == len(embs)  # all pockets differ
    # the folder is readable by the precomputed provider, and the round trip is exact
    items = data.load_processed_split(out, "val")
    prov = make_provider(f"precomputed:{out / 'embeddings'}")
    for item in items:
        assert np.array_equal(item["embedding"], prov.embed_id(item["name"]))
        assert item["lig_one_hot"].shape[1] == 10


def test_process_cli(tmp_path):
    _need_complexes()
    from moltune.cli.main import main

    src = tmp_path / "src"
    src.mkdir()
    for cid in ("3rfm", "1uw6", "1w1p"):
        os.symlink((COMPLEXES / cid).resolve(), src / cid)
    out = tmp_path / "out"
    rc = main(["sbdd", "process", "--data", str(src), "--out", str(out), "--embedding", "none"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_processed"] == 3 and summary["embedding"] is None
    assert len(summary["splits"]["val"]) == 2 and len(summary["splits"]["train"]) == 1
    assert not (out / "embeddings").exists()
    assert main(["sbdd", "process", "--data", str(tmp_path / "nope"), "--out", str(out)]) == 2


def test_explicit_split_keeps_protein_groups_whole(tmp_path):
    """An explicit split may not separate 1fbh / 3fbp (same protein family), nor name a
    complex that was not processed; whole groups in one split are accepted."""
    _need_complexes()
    src = tmp_path / "src"
    src.mkdir()
    for name in ("1fbh", "3fbp", "1w1p"):
        os.symlink((COMPLEXES / name).resolve(), src / name)
    with pytest.raises(InvalidInputError, match="separates one protein group"):
        data.process_complexes(src, tmp_path / "bad", {"1fbh": "val"}, embedding=None,
                               progress=False)
    with pytest.raises(InvalidInputError, match=r"\['1xyz'\]"):
        data.process_complexes(src, tmp_path / "typo", {"1xyz": "val"}, embedding=None,
                               progress=False)
    summary = data.process_complexes(src, tmp_path / "ok", {"1fbh": "val", "3fbp": "val"},
                                     embedding=None, progress=False)
    assert summary["splits"]["val"] == ["1fbh", "3fbp"]
    assert summary["splits"]["train"] == ["1w1p"]


def test_reprocessing_replaces_the_old_folder_whole(tmp_path):
    """Processing again into a processed folder leaves none of the old complexes' files (the
    folder is replaced at the end); a folder of other files is refused untouched."""
    _need_complexes()
    src = tmp_path / "src"
    src.mkdir()
    for name in ("1fbh", "3fbp", "1w1p"):
        os.symlink((COMPLEXES / name).resolve(), src / name)
    out = tmp_path / "out"
    data.process_complexes(src, out, {"1w1p": "val"}, embedding="deterministic", progress=False)
    assert (out / "val" / "1w1p.pdb").is_file() and (out / "embeddings" / "1w1p.npy").is_file()
    os.chmod(out, 0o750)
    summary = data.process_complexes(src, out, {"1fbh": "val", "3fbp": "val"}, embedding=None,
                                     progress=False)
    assert summary["splits"]["train"] == ["1w1p"]
    assert sorted(p.name for p in (out / "val").iterdir()) == [
        f"{c}.{ext}" for c in ("1fbh", "3fbp") for ext in ("pdb", "sdf", "txt")]
    assert not (out / "embeddings").exists()
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o750)  # the folder keeps its permissions
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(InvalidInputError, match="not a processed data set"):
        data.process_complexes(src, mine, {"1w1p": "val"}, embedding=None, progress=False)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
