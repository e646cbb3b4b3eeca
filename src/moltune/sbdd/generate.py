"""Batched ligand generation for one pocket, and writing the result as SDF.

Coordinates come back in Å in the PDB frame of the pocket; atom types as indices into
:data:`moltune.sbdd.vocab.ELEMENTS`. The number of atoms per sample is drawn from the
checkpoint's size histogram p(N_lig | N_pocket) unless given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moltune.common.errors import InvalidInputError
from moltune.common.io import atomic_path
from moltune.sbdd.diffusion import gaussian_noise
from moltune.sbdd.model import LigandDiffusionModel
from moltune.sbdd.vocab import ELEMENTS, N_ELEMENTS


@dataclass
class GeneratedLigand:
    """One generated ligand: heavy-atom coordinates (Å, PDB frame) and element indices."""

    coords_A: np.ndarray  # [n,3] float64
    atom_type_index: np.ndarray  # [n] int64

    @property
    def symbols(self) -> list[str]:
        return [ELEMENTS[i] for i in self.atom_type_index]


@dataclass
class GenerationResult:
    ligands: list[GeneratedLigand]
    num_atoms: list[int]
    timesteps: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def _pocket_arrays(pocket: Any) -> tuple[np.ndarray, np.ndarray]:
    coords = np.asarray(pocket.coords_A, dtype=np.float64)
    one_hot = np.asarray(pocket.one_hot, dtype=np.float32)
    if coords.ndim != 2 or coords.shape[1] != 3 or len(coords) == 0:
        raise InvalidInputError(f"pocket coordinates must be [M,3] with M > 0, got {coords.shape}")
    if one_hot.shape != (len(coords), N_ELEMENTS):
        raise InvalidInputError(f"pocket one-hot must be [{len(coords)},{N_ELEMENTS}], "
                                f"got {one_hot.shape}")
    if not np.isfinite(coords).all():
        raise InvalidInputError("pocket coordinates contain NaN or infinite values")
    return coords, one_hot


def generate(
    model: LigandDiffusionModel,
    pocket: Any,
    n_samples: int,
    num_atoms: int | Sequence[int] | None = None,
    timesteps: int | None = None,
    batch_size: int = 16,
    seed: int | None = None,
    embedding: np.ndarray | torch.Tensor | None = None,
    progress: bool = True,
) -> GenerationResult:
    """Generate ``n_samples`` ligands for ``pocket`` (``.coords_A`` [M,3] Å, ``.one_hot`` [M,10]).

    ``num_atoms``: one size for all, one per sample, or None (drawn from the checkpoint's
    histogram given the pocket size). ``embedding`` [E]: the pocket embedding for the FiLM
    adapter (required iff the model has one). Runs in batches of ``batch_size`` with a tqdm bar.
    """
    import time

    from tqdm.auto import tqdm

    if n_samples < 1:
        raise InvalidInputError(f"n_samples must be >= 1, got {n_samples}")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    if model.film is not None and embedding is None:
        raise InvalidInputError("the model has a FiLM adapter: give a pocket embedding")
    coords, one_hot = _pocket_arrays(pocket)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    if num_atoms is None:
        sizes = model.sample_num_atoms(len(coords), n_samples, generator=gen).tolist()
    elif np.isscalar(num_atoms):
        sizes = [int(num_atoms)] * n_samples
    else:
        sizes = [int(n) for n in num_atoms]
        if len(sizes) != n_samples:
            raise InvalidInputError(f"{len(sizes)} ligand sizes given for {n_samples} samples")
    if num_atoms is not None and min(sizes) < 1:
        raise InvalidInputError(f"ligand sizes must be >= 1 atom, got {min(sizes)}")
    # A 0-atom draw from the histogram (possible, tiny probability) becomes 1 atom.
    sizes = [max(1, n) for n in sizes]
    steps = model.ddpm.T if timesteps is None else int(timesteps)
    if not 1 <= steps:
        raise InvalidInputError(f"timesteps must be >= 1, got {steps}")

    p = next(model.parameters())
    pocket_x = torch.as_tensor(coords, dtype=p.dtype)
    pocket_h = torch.as_tensor(one_hot, dtype=p.dtype)
    noise = gaussian_noise(gen)
    was_training = model.training
    model.eval()
    ligands: list[GeneratedLigand] = []
    t0 = time.perf_counter()
    n_batches = -(-n_samples // batch_size)
    bar = tqdm(total=n_batches * steps, desc="denoising", unit="step", disable=not progress)
    try:
        for start in range(0, n_samples, batch_size):
            chunk = sizes[start:start + batch_size]
            b = len(chunk)
            px = pocket_x.repeat(b, 1)
            ph = pocket_h.repeat(b, 1)
            pmask = torch.arange(b).repeat_interleave(len(coords))
            emb = None if embedding is None else torch.as_tensor(np.asarray(embedding)).float()
            x, types, lmask = model.sample(px, ph, pmask, torch.tensor(chunk), timesteps=steps,
                                           embeddings=emb, noise=noise,
                                           callback=lambda _s: bar.update(1))
            x = x.double().cpu().numpy()
            types = types.cpu().numpy().astype(np.int64)
            lmask = lmask.cpu().numpy()
            for i in range(b):
                sel = lmask == i
                ligands.append(GeneratedLigand(coords_A=x[sel], atom_type_index=types[sel]))
    finally:
        bar.close()
        model.train(was_training)
    return GenerationResult(ligands=ligands, num_atoms=sizes, timesteps=steps,
                            seconds=time.perf_counter() - t0,
                            info={"batch_size": batch_size, "seed": seed,
                                  "pocket_atoms": len(coords)})


def ligand_to_mol(ligand: GeneratedLigand, method: str = "rdkit") -> tuple[Any, bool]:
    """RDKit molecule for a generated ligand via the chemistry helper's ``build_molecule``.

    Returns (mol, built). If bond perception fails (or ``method="none"``), an atoms-only
    molecule with the coordinates is returned (built=False) so every sample appears in the SDF.
    """
    from rdkit import Chem

    from moltune.sbdd.chemistry import build_molecule

    mol = (None if method == "none"
           else build_molecule(ligand.coords_A, ligand.atom_type_index, method=method))
    if mol is not None:
        return mol, True
    rw = Chem.RWMol()
    conf = Chem.Conformer(len(ligand.atom_type_index))
    for i, (sym, xyz) in enumerate(zip(ligand.symbols, ligand.coords_A)):
        rw.AddAtom(Chem.Atom(sym))
        conf.SetAtomPosition(i, [float(v) for v in xyz])
    rw.AddConformer(conf, assignId=True)
    return rw.GetMol(), False


def write_sdf(path: str | Path, ligands: Sequence[GeneratedLigand], method: str = "rdkit",
              name_prefix: str = "sample") -> dict[str, int]:
    """Write the ligands to one SDF (atomically); returns counts of built/atoms-only records."""
    from rdkit import Chem

    counts = {"written": 0, "bonds_perceived": 0, "atoms_only": 0}
    with atomic_path(path) as tmp:
        writer = Chem.SDWriter(str(tmp))
        writer.SetKekulize(False)
        try:
            for i, lig in enumerate(ligands):
                mol, built = ligand_to_mol(lig, method=method)
                try:
                    Chem.MolToMolBlock(mol, kekulize=False)
                except Exception:  # noqa: BLE001 - RDKit cannot write this bonding: keep the atoms
                    mol, built = ligand_to_mol(lig, method="none")
                mol.SetProp("_Name", f"{name_prefix}_{i}")
                mol.SetIntProp("moltune_bonds_perceived", int(built))
                writer.write(mol)
                counts["written"] += 1
                counts["bonds_perceived" if built else "atoms_only"] += 1
        finally:
            writer.close()
    return counts
