"""Shared fixtures for the ligand-diffusion tests: the shared DiffSBDD fixture and complexes,
and one intra-op thread (on a busy 2-core CPU, two threads can be 1000x slower for these sizes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
DIFFSBDD = SHARED / "fixtures" / "diffsbdd"
COMPLEXES = SHARED / "data" / "complexes"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def golden() -> dict:
    """The reference implementation's recorded inputs and outputs (plain types, weights-only)."""
    path = DIFFSBDD / "golden_io.pt"
    if not path.is_file():
        pytest.skip("DiffSBDD fixture not available")
    return torch.load(path, weights_only=True)


def make_tiny_sbdd(tmp_path_factory, split: dict[str, str], name: str) -> dict:
    """Process ``split`` (complex id -> train/val) from the shared complexes with deterministic
    embeddings and write a tiny checkpoint of the published layout trained on nothing."""
    from moltune.sbdd.data import load_processed_split, process_complexes
    from moltune.sbdd.standin import tiny_checkpoint

    root = tmp_path_factory.mktemp(name)
    src = root / "src"
    src.mkdir()
    for cid in split:
        (src / cid).symlink_to((COMPLEXES / cid).resolve())
    proc = root / "processed"
    process_complexes(src, proc, split=split, embedding="deterministic", progress=False)
    items = load_processed_split(proc, "train") + load_processed_split(proc, "val")
    ckpt = tiny_checkpoint(root / "tiny.ckpt", items, hidden_nf=16, n_layers=1, joint_nf=8)
    return {"root": root, "processed": proc, "ckpt": ckpt}


@pytest.fixture(scope="session")
def tiny_sbdd_factory(tmp_path_factory):
    """``factory(split, name)`` -> {"root", "processed", "ckpt"} (see ``make_tiny_sbdd``)."""
    if not COMPLEXES.is_dir():
        pytest.skip("shared complexes not available")
    return lambda split, name: make_tiny_sbdd(tmp_path_factory, split, name)
