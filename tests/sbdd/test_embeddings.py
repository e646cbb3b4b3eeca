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


@pytest.mark.slow
def test_esmc_provider_runs_the_real_esm_package(tmp_path, pockets):
    """A small randomly initialised ESM-C (3 layers, d_model 128) through the provider: its size
    and layer count come from the weights, and the pocket embedding is the mean of the pocket
    residues' rows of esm's own forward pass over the whole chain; ``sbdd process`` writes it."""
    pytest.importorskip("esm.models.esmc")
    import torch
    from esm.models.esmc import ESMC
    from esm.tokenization import get_esmc_model_tokenizers

    from moltune.sbdd.data import load_processed_split, process_complexes

    torch.manual_seed(0)
    tokenizer = get_esmc_model_tokenizers()
    ref = ESMC(d_model=128, n_heads=2, n_layers=3, tokenizer=tokenizer, use_flash_attn=False)
    weights = tmp_path / "esmc_small.pth"
    torch.save(ref.state_dict(), weights)
    provider = make_provider(f"esmc:{weights}")
    pocket = pockets["3rfm"]
    emb = provider.embed(pocket)
    assert emb.shape == (128,) and emb.dtype == np.float32 and provider.dim == 128
    assert len(provider._load().transformer.blocks) == 3

    ref.eval()
    chains = [rid.split(":")[0] for rid in pocket.residue_ids]
    rows = []
    for chain in dict.fromkeys(chains):
        tokens = torch.tensor(tokenizer.encode(pocket.chain_sequences[chain]))[None]
        with torch.no_grad():
            per_residue = ref(sequence_tokens=tokens).embeddings[0, 1:-1].numpy()
        assert per_residue.shape == (len(pocket.chain_sequences[chain]), 128)
        rows += [per_residue[pos] for c, pos in zip(chains, pocket.residue_chain_positions)
                 if c == chain]
    np.testing.assert_allclose(emb, np.mean(rows, axis=0), rtol=1e-4, atol=1e-5)
    assert np.abs(provider.embed(pockets["1uw6"]) - emb).max() > 1e-3  # pockets differ

    src = tmp_path / "src"
    src.mkdir()
    for cid in ("3rfm", "1uw6"):
        (src / cid).symlink_to((COMPLEXES / cid).resolve())
    out = tmp_path / "processed"
    process_complexes(src, out, split={"3rfm": "train", "1uw6": "val"},
                      embedding=f"esmc:{weights}", progress=False)
    train = load_processed_split(out, "train")
    np.testing.assert_allclose(train[0]["embedding"], emb, rtol=1e-5, atol=1e-6)
