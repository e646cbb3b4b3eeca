"""Every command refuses bad input the same way: exit status 2, one line on stderr naming what is
wrong, no traceback, and nothing created or changed (the whole tree is compared before/after).

Each case runs ``moltune.cli.main.main`` in-process with a bad argument that is checked before
any expensive work, so the table stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from moltune.cli.main import main

COMPLEXES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "complexes"
COMPLEX = "1a3b"


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace of good and bad inputs (built once; every case must leave it as it is)."""
    from moltune.physics.peptide import build_peptide
    from moltune.physics.ptdata import METADATA_FILE, STATE_FILE, TOPOLOGY_FILE
    from moltune.physics.replica_exchange import METADATA_FORMAT, PTConfig, _trajectory_settings

    d = tmp_path_factory.mktemp("bad_inputs")
    pep = build_peptide("AA", minimize=False)
    pep.write_pdb(d / "aa.pdb")
    (d / "xyz.pdb").write_text((d / "aa.pdb").read_text().replace("ALA", "XYZ"))
    (d / "empty.pdb").write_bytes(b"")
    (d / "garbage.pdb").write_text("this is not a protein\nat all\n")
    np.save(d / "x.npy", pep.positions_nm)
    np.savez(d / "x.npz", xyz=pep.positions_nm)
    (d / "nomol.sdf").write_text("$$$$\n")
    (d / "text.sdf").write_text("some notes, not molecules\n")
    (d / "garbage_smiles.npy").write_bytes(os.urandom(256))
    (d / "blocker").write_text("a file where a folder is expected\n")
    (d / "adir").mkdir()
    (d / "foreign").mkdir()
    (d / "foreign" / "notes.txt").write_text("someone's notes\n")
    if COMPLEXES.is_dir():
        shutil.copy(COMPLEXES / COMPLEX / "protein.pdb", d / "protein.pdb")
        shutil.copy(COMPLEXES / COMPLEX / "ligand.sdf", d / "ligand.sdf")
        (d / "one_complex").mkdir()
        shutil.copytree(COMPLEXES / COMPLEX, d / "one_complex" / COMPLEX)
    # PT run folders: damaged state, garbage metadata, someone else's metadata
    meta = {"format": METADATA_FORMAT, **_trajectory_settings(PTConfig(time_ns=0.001))}
    for name in ("run_truncated", "run_garbage_meta", "run_foreign_meta"):
        (d / name).mkdir()
        shutil.copy(d / "aa.pdb", d / name / TOPOLOGY_FILE)
    (d / "run_truncated" / METADATA_FILE).write_text(json.dumps(meta))
    (d / "run_truncated" / STATE_FILE).write_bytes(b"PK\x03\x04truncated")
    (d / "run_garbage_meta" / METADATA_FILE).write_text("{not json")
    (d / "run_garbage_meta" / STATE_FILE).write_bytes(b"PK\x03\x04truncated")
    (d / "run_foreign_meta" / METADATA_FILE).write_text(json.dumps({"author": "someone"}))
    return d


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, mode, mtime and content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        out[str(p.relative_to(root))] = (p.is_dir(), st.st_mode, st.st_mtime_ns, digest)
    return out


def _set(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with the value after ``flag`` replaced (a positional: ``flag`` is its index)."""
    out = list(argv)
    i = int(flag) if flag.isdigit() else out.index(flag) + 1
    out[i] = value
    return out


PT = ["pt", "simulate", "--peptide", "{d}/aa.pdb", "--time-ns", "0.001", "--no-progress"]
EVAL = ["pt", "evaluate", "--identity", "--data", "{d}/adir", "--out", "{d}/ev"]
GEN = ["sbdd", "generate", "{d}/none.ckpt", "--pdb", "{d}/protein.pdb", "--ref-ligand",
       "{d}/ligand.sdf", "--n-samples", "2", "--out", "{d}/gen.sdf", "--no-progress"]
SEVAL = ["sbdd", "evaluate", "{d}/ligand.sdf", "--no-posebusters"]
DOCK = ["sbdd", "dock", "{d}/ligand.sdf", "--pdb", "{d}/protein.pdb", "--ref-ligand",
        "{d}/ligand.sdf", "--no-progress"]
PROC = ["sbdd", "process", "--data", "{d}/one_complex", "--no-progress"]
BASE = ["sbdd", "baselines", "{d}/none.ckpt", "--data", "{d}/adir", "--no-progress"]
ENERGY = ["energy", "--pdb", "{d}/aa.pdb", "--coords", "{d}/x.npy"]

# (case id, argv, text the one error line must contain, needs the shared complexes)
CASES = [
    ("usage-unknown-option", [*ENERGY, "--out", "{d}/u.npy", "--bogus"], "unrecognized", False),
    ("usage-not-a-number", [*PT, "--out", "{d}/r", "--seed", "x"], "--seed", False),
    # peptide build
    ("build-out-is-folder", ["peptide", "build", "AA", "--out", "{d}/adir"], "is a folder", False),
    ("build-out-under-file", ["peptide", "build", "AA", "--out", "{d}/blocker/a.pdb"],
     "is a file, not a folder", False),
    ("build-bad-letter", ["peptide", "build", "AZ", "--out", "{d}/az.pdb"], "Z", False),
    # energy
    ("energy-npz", [*_set(ENERGY, "--coords", "{d}/x.npz"), "--out", "{d}/u.npy"], ".npz", False),
    ("energy-empty-pdb", ["energy", "--pdb", "{d}/empty.pdb", "--coords", "{d}/x.npy", "--out",
                          "{d}/u.npy"], "is empty", False),
    ("energy-garbage-pdb", ["energy", "--pdb", "{d}/garbage.pdb", "--coords", "{d}/x.npy",
                            "--out", "{d}/u.npy"], "no ATOM or HETATM", False),
    ("energy-missing-pdb", ["energy", "--pdb", "{d}/nope.pdb", "--coords", "{d}/x.npy", "--out",
                            "{d}/u.npy"], "not found", False),
    ("energy-unknown-residue", ["energy", "--pdb", "{d}/xyz.pdb", "--coords", "{d}/x.npy",
                                "--out", "{d}/u.npy"], "XYZ", False),
    ("energy-out-is-folder", [*ENERGY, "--out", "{d}/adir"], "is a folder", False),
    ("energy-forces-under-file", [*ENERGY, "--out", "{d}/u.npy", "--forces", "{d}/blocker/f.npy"],
     "--forces", False),
    ("energy-out-is-the-coordinates", [*ENERGY, "--out", "{d}/x.npy"], "also an input", False),
    ("energy-workers-0", [*ENERGY, "--out", "{d}/u.npy", "--workers", "0"], "--workers", False),
    # pt simulate
    ("pt-unknown-residue", [*_set(PT, "--peptide", "{d}/xyz.pdb"), "--out", "{d}/new_run"], "XYZ",
     False),
    ("pt-bogus-platform", [*PT, "--out", "{d}/new_run", "--platform", "BOGUS"], "BOGUS", False),
    ("pt-out-is-file", [*PT, "--out", "{d}/blocker"], "is a file", False),
    ("pt-out-under-file", [*PT, "--out", "{d}/blocker/run"], "is a file, not a folder", False),
    ("pt-truncated-state", [*PT, "--out", "{d}/run_truncated"], "damaged", False),
    ("pt-garbage-metadata", [*PT, "--out", "{d}/run_garbage_meta"], "not a moltune PT run",
     False),
    ("pt-foreign-metadata", [*PT, "--out", "{d}/run_foreign_meta"], "not written by", False),
    ("pt-time-nan", [*_set(PT, "--time-ns", "nan"), "--out", "{d}/r"], "finite", False),
    ("pt-time-negative", [*_set(PT, "--time-ns", "-1"), "--out", "{d}/r"], "must be > 0", False),
    ("pt-temperature-nan", [*PT, "--out", "{d}/r", "--temperatures", "300", "nan"], "finite",
     False),
    ("pt-threads-0", [*PT, "--out", "{d}/r", "--threads", "0"], "--threads", False),
    ("pt-swap-interval-0", [*PT, "--out", "{d}/r", "--swap-interval-ps", "0"],
     "--swap-interval-ps", False),
    # pt evaluate
    ("eval-max-frames-0", [*EVAL, "--max-frames", "0"], "--max-frames", False),
    ("eval-batch-size-0", [*EVAL, "--batch-size", "0"], "--batch-size", False),
    ("eval-n-boot-0", [*EVAL, "--n-boot", "0"], "--n-boot", False),
    ("eval-n-pairs-0", [*EVAL, "--n-pairs", "0"], "--n-pairs", False),
    ("eval-out-is-file", _set(EVAL, "--out", "{d}/blocker"), "is a file", False),
    ("eval-damaged-data", _set(EVAL, "--data", "{d}/run_garbage_meta"), "not readable PT metadata",
     False),
    ("eval-no-data", _set(EVAL, "--data", "{d}/nodata"), "nodata", False),
    # sbdd generate
    ("gen-num-atoms-0", [*GEN, "--num-atoms", "0"], "--num-atoms", True),
    ("gen-num-atoms-negative", [*GEN, "--num-atoms", "-4"], "--num-atoms", True),
    ("gen-n-samples-0", _set(GEN, "--n-samples", "0"), "--n-samples", True),
    ("gen-ref-ligand-no-molecule", _set(GEN, "--ref-ligand", "{d}/nomol.sdf"), "no molecule", True),
    ("gen-out-is-folder", _set(GEN, "--out", "{d}/adir"), "is a folder", True),
    ("gen-missing-checkpoint", GEN, "none.ckpt", True),
    ("gen-bogus-embedding", [*GEN, "--embedding", "word2vec", "--film-init", "identity"],
     "unknown embedding spec", True),
    # sbdd evaluate
    ("evaluate-text-file", _set(SEVAL, "2", "{d}/text.sdf"), "no molecule", True),
    ("evaluate-no-molecule", _set(SEVAL, "2", "{d}/nomol.sdf"), "no molecule", True),
    ("evaluate-garbage-train-smiles", [*SEVAL, "--train-smiles", "{d}/garbage_smiles.npy",
                                       "--out", "{d}/m.json"], "training SMILES", True),
    ("evaluate-out-is-the-input", [*SEVAL, "--out", "{d}/ligand.sdf"], "also an input", True),
    ("evaluate-out-is-folder", [*SEVAL, "--out", "{d}/adir"], "is a folder", True),
    ("evaluate-out-under-file", [*SEVAL, "--out", "{d}/blocker/m.json"], "not a folder", True),
    # sbdd dock
    ("dock-out-is-the-protein", [*DOCK, "--out", "{d}/protein.pdb"], "also an input", True),
    ("dock-spacing-0", [*DOCK, "--spacing", "0"], "--spacing", True),
    ("dock-ph-40", [*DOCK, "--ph", "40"], "--ph", True),
    ("dock-padding-nan", [*DOCK, "--padding", "nan"], "finite", True),
    ("dock-workers-0", [*DOCK, "--workers", "0"], "--workers", True),
    ("dock-out-is-folder", [*DOCK, "--out", "{d}/adir"], "is a folder", True),
    ("dock-out-under-file", [*DOCK, "--out", "{d}/blocker/s.csv"], "not a folder", True),
    ("dock-summary-is-folder", [*DOCK, "--out", "{d}/s.csv", "--summary", "{d}/adir"],
     "--summary", True),
    ("dock-ligands-no-molecule", [*_set(DOCK, "2", "{d}/nomol.sdf"), "--out", "{d}/s.csv"],
     "no molecule", True),
    ("dock-ref-ligand-text", [*_set(DOCK, "--ref-ligand", "{d}/text.sdf"), "--out", "{d}/s.csv"],
     "no molecule", True),
    ("dock-garbage-pdb", [*_set(DOCK, "--pdb", "{d}/garbage.pdb"), "--out", "{d}/s.csv"], "no ATOM or HETATM", True),
    # sbdd process
    ("process-val-fraction-negative", [*PROC, "--out", "{d}/p", "--val-fraction", "-0.5"],
     "--val-fraction", True),
    ("process-val-fraction-2", [*PROC, "--out", "{d}/p", "--val-fraction", "2"],
     "--val-fraction", True),
    ("process-cutoff-0", [*PROC, "--out", "{d}/p", "--cutoff", "0"], "--cutoff", True),
    ("process-foreign-out", [*PROC, "--out", "{d}/foreign"], "not a processed data set", True),
    ("process-empty-training-split", [*PROC, "--out", "{d}/p"], "training split", True),
    # sbdd baselines
    ("baselines-repeated-seed", [*BASE, "--out", "{d}/b", "--seeds", "0", "0"], "different",
     True),
    ("baselines-film-gain-nan", [*BASE, "--out", "{d}/b", "--random-film-gain", "nan"], "finite",
     True),
    ("baselines-max-pockets-negative", [*BASE, "--out", "{d}/b", "--max-pockets", "-1"],
     "--max-pockets", True),
    ("baselines-max-pockets-zero", [*BASE, "--out", "{d}/b", "--max-pockets", "0"],
     "--max-pockets", True),
    ("baselines-out-under-file", [*BASE, "--out", "{d}/blocker/b"], "not a folder", True),
]


@pytest.mark.parametrize(("argv", "expected", "needs_complexes"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_one_line_and_changes_nothing(
    ws, argv, expected, needs_complexes, capsys, monkeypatch
):
    if needs_complexes and not COMPLEXES.is_dir():
        pytest.skip("shared complexes not available")
    monkeypatch.chdir(ws)  # default output names (scores.csv, metrics.json) land in ws
    before = snapshot(ws)
    rc = main([a.replace("{d}", str(ws)) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert "error:" in lines[0] and expected in lines[0], lines[0]
    assert "Traceback" not in err
    assert snapshot(ws) == before
