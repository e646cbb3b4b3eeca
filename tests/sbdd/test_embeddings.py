"""Pocket embedding providers: deterministic stand-in, precomputed files, ESM-C errors."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from moltune.common.errors import InputFileError, InvalidInputError
from moltune.sbdd.data import pocket_from_pdb
from moltune.sbdd.embeddings import (
    EMBEDDING_DIM,
    DeterministicEmbedding,
    PrecomputedEmbedding,
    make_provider,
)

COMPLEXES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "complexes"


@pytest.fixture(scope="module")
def pockets():
    if not COMPLEXES.is_dir():
        pytest.skip("shared complexes not available")
    out = {}
    for cid in ("3rfm", "1uw6"):
        d = COMPLEXES / cid
        out[cid] = pocket_from_pdb(d / "protein.pdb", d / "ligand.sdf")
    return out


def _rotated(pocket, seed=3):
    from scipy.spatial.transform import Rotation

    rot = Rotation.random(random_state=seed).as_matrix()
    return dataclasses.replace(pocket, coords_A=pocket.coords_A @ rot.T + np.array([5.0, -2, 40]))


def test_deterministic_is_deterministic_and_pocket_dependent(pockets):
    a, b = pockets["3rfm"], pockets["1uw6"]
    p1, p2 = make_provider("deterministic"), make_provider("deterministic")
    ea, ea2, eb = p1.embed(a), p2.embed(a), p1.embed(b)
    assert ea.shape == (EMBEDDING_DIM,) and ea.dtype == np.float32
    assert np.array_equal(ea, ea2)  # same pocket, fresh provider: bit-identical
    assert np.linalg.norm(ea) == pytest.approx(1.0, abs=1e-6)
    assert float(ea @ eb) < 0.95  # different pockets differ
    # a smaller pocket of the same protein differs too
    sub = pocket_from_pdb(a.pdb_path, resi_list=a.residue_ids[:20])
    assert float(ea @ p1.embed(sub)) < 0.99
    # rigid motion and the pocket's name do not matter
    assert np.allclose(p1.embed(_rotated(a)), ea, atol=1e-6)
    assert np.array_equal(p1.embed(dataclasses.replace(a, pocket_id="other")), ea)
    # another seed is another (equally valid) projection
    assert not np.allclose(DeterministicEmbedding(seed=1).embed(a), ea)


def test_precomputed_reads_files_and_errors_clearly(tmp_path, pockets):
    a, b = pockets["3rfm"], pockets["1uw6"]
    rng = np.random.default_rng(0)
    va, vb = rng.standard_normal(960).astype(np.float32), rng.standard_normal(960)
    np.save(tmp_path / "3rfm.npy", va)
    np.savez(tmp_path / "1uw6.npz", embedding=vb)
    prov = make_provider(f"precomputed:{tmp_path}")
    assert isinstance(prov, PrecomputedEmbedding)
    assert np.array_equal(prov.embed(a), va)
    assert np.allclose(prov.embed(b), vb.astype(np.float32))
    with pytest.raises(InputFileError, match="no precomputed embedding for pocket 'missing'"):
        prov.embed(dataclasses.replace(a, pocket_id="missing"))
    np.save(tmp_path / "short.npy", np.zeros(10))
    with pytest.raises(InvalidInputError, match="expected 960"):
        prov.embed_id("short")
    with pytest.raises(InputFileError, match="folder not found"):
        make_provider(f"precomputed:{tmp_path / 'nope'}")


def test_esmc_missing_weights_error_says_how_to_obtain(tmp_path):
    already = "esm" in sys.modules
    with pytest.raises(InputFileError) as err:
        make_provider(f"esmc:{tmp_path / 'esmc_300m_2024_12_v0.pth'}")
    msg = str(err.value)
    assert "not found" in msg and "esmc_300m_2024_12_v0.pth" in msg
    assert "EvolutionaryScale/esmc-300m-2024-12" in msg and "pip install esm" in msg
    with pytest.raises(InputFileError, match="no ESM-C weights file"):
        make_provider(f"esmc:{tmp_path}")  # an empty folder
    with pytest.raises(InvalidInputError):
        make_provider("esmc:")
    assert ("esm" in sys.modules) == already  # nothing imported, nothing downloaded


def test_unknown_spec():
    with pytest.raises(InvalidInputError, match="unknown embedding spec"):
        make_provider("word2vec")
