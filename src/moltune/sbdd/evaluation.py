"""Evaluation of a ligand diffusion model on pockets: batching, generation, chemistry metrics.

``complex_batch`` turns processed complexes (dicts from :func:`moltune.sbdd.data.load_processed_split`)
into the DiffSBDD batch layout the model's loss takes. ``evaluate_pockets`` generates molecules
for each pocket with a fixed seed per pocket (so two models compared on the same pockets see the
same random numbers), builds them with RDKit and aggregates validity, connectivity, QED and SA.
``GenerationEvalCallback`` runs it during fine-tuning at a step interval and logs ``val/validity``,
``val/connectivity``, ``val/qed``, ``val/sa`` (names from the contract).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

#: Metrics logged by the generation evaluation (contract names) and their summary keys.
LOGGED = {"val/validity": "validity", "val/connectivity": "connectivity", "val/qed": "qed",
          "val/sa": "sa", "val/valid_and_connected": "valid_and_connected"}


#: Metrics undefined when no valid, connected molecule was generated.
OPTIONAL = ("val/qed", "val/sa")


def complex_batch(items: Sequence[Mapping[str, Any]], centre: bool = True,
                  dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Processed complexes -> one batch in the DiffSBDD layout (Å, one-hots 0/1).

    With ``centre`` each complex is shifted by the mean of its ligand and pocket atoms (as the
    DiffSBDD training dataset does; the loss is translation invariant anyway). Adds
    ``embeddings`` [B, E] when every complex has one.
    """
    lc, lo, lm, pc, po, pm = [], [], [], [], [], []
    for i, d in enumerate(items):
        lig = np.asarray(d["lig_coords"], dtype=np.float64)
        poc = np.asarray(d["pocket_coords"], dtype=np.float64)
        c = np.concatenate([lig, poc]).mean(0) if centre else np.zeros(3)
        lc.append(lig - c)
        pc.append(poc - c)
        lo.append(np.asarray(d["lig_one_hot"], dtype=np.float32))
        po.append(np.asarray(d["pocket_one_hot"], dtype=np.float32))
        lm.append(np.full(len(lig), i, dtype=np.int64))
        pm.append(np.full(len(poc), i, dtype=np.int64))

    def cat(xs, dt=dtype):
        return torch.as_tensor(np.concatenate(xs)).to(dt)

    batch = {
        "lig_coords": cat(lc), "lig_one_hot": cat(lo), "lig_mask": cat(lm, torch.long),
        "pocket_coords": cat(pc), "pocket_one_hot": cat(po), "pocket_mask": cat(pm, torch.long),
        "num_lig_atoms": torch.tensor([len(x) for x in lc], dtype=torch.long),
        "num_pocket_nodes": torch.tensor([len(x) for x in pc], dtype=torch.long),
    }
    embs = [d.get("embedding") for d in items]
    if embs and all(e is not None for e in embs):
        batch["embeddings"] = torch.as_tensor(np.stack(embs)).float()
    return batch


@dataclass
class PocketView:
    """What :func:`moltune.sbdd.generate.generate` needs of a pocket (Å, PDB frame)."""

    coords_A: np.ndarray
    one_hot: np.ndarray


def pocket_seed(seed: int, index: int) -> int:
    """Seed for pocket ``index`` of an evaluation with base ``seed`` (same for every model)."""
    return int(seed) * 100_003 + int(index)


def generate_for_pockets(model, items: Sequence[Mapping[str, Any]], n_samples: int,
                         timesteps: int | None = 100, seed: int = 0,
                         num_atoms: str | int = "reference", batch_size: int = 16,
                         use_embedding: bool | None = None, progress: bool = False,
                         indices: Sequence[int] | None = None) -> list[tuple[str, list[Any]]]:
    """Generate ``n_samples`` ligands per complex; returns [(name, [GeneratedLigand])].

    ``num_atoms``: "reference" (the complex's own ligand size), "histogram" (the checkpoint's
    size distribution) or an int. The embedding is passed iff the model has a FiLM adapter
    (override with ``use_embedding``). ``indices``: the complexes' positions in the full set
    (their seeds; default 0, 1, ...), for a shard of it.
    """
    from moltune.sbdd.generate import generate

    use_embedding = model.film is not None if use_embedding is None else use_embedding
    out = []
    indices = range(len(items)) if indices is None else indices
    for i, d in zip(indices, items, strict=True):
        if num_atoms == "reference":
            size: Any = len(d["lig_coords"])
        elif num_atoms == "histogram":
            size = None
        else:
            size = int(num_atoms)
        emb = d.get("embedding") if use_embedding else None
        res = generate(model, PocketView(np.asarray(d["pocket_coords"], np.float64),
                                         np.asarray(d["pocket_one_hot"], np.float32)),
                       n_samples, num_atoms=size, timesteps=timesteps, batch_size=batch_size,
                       seed=pocket_seed(seed, i), embedding=emb, progress=progress)
        out.append((str(d.get("name", i)), res.ligands))
    return out


def molecule_rows(ligands: Sequence[Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    """Per-molecule chemistry rows (validity, connectivity, QED, SA, ...) and the valid mols."""
    from moltune.sbdd.chemistry import build_molecule, molecule_metrics, sanitized_copy

    rows, valid = [], []
    for lig in ligands:
        try:
            mol = build_molecule(lig.coords_A, lig.atom_type_index)
        except Exception as exc:  # noqa: BLE001 - a generated ligand RDKit cannot take is invalid
            log.debug("molecule building failed: %s", exc)
            mol = None
        row = molecule_metrics(mol)
        rows.append(row)
        if row.get("valid"):
            valid.append(sanitized_copy(mol))
    return rows, valid


def summarise_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate rows with :func:`moltune.sbdd.chemistry.summarise`; connectivity is 0, not
    undefined, when no molecule is valid (a collapse must read as one)."""
    from moltune.sbdd.chemistry import summarise

    s = summarise(list(rows))
    if s.get("connectivity") is None:
        s["connectivity"] = 0.0
    return s


def evaluate_pockets(model, items: Sequence[Mapping[str, Any]], n_samples: int,
                     timesteps: int | None = 100, seed: int = 0,
                     num_atoms: str | int = "reference", batch_size: int = 16,
                     use_embedding: bool | None = None, progress: bool = False,
                     indices: Sequence[int] | None = None) -> dict[str, Any]:
    """Generate for every pocket and return {"summary", "per_pocket", "rows"}.

    ``rows`` carry the pocket name and sample index so paired comparisons are possible.
    ``indices``: as for :func:`generate_for_pockets`.
    """
    gens = generate_for_pockets(model, items, n_samples, timesteps, seed, num_atoms, batch_size,
                                use_embedding, progress, indices)
    all_rows, per_pocket = [], {}
    for name, ligands in gens:
        rows, _ = molecule_rows(ligands)
        for j, r in enumerate(rows):
            r["pocket"] = name
            r["sample"] = j
        per_pocket[name] = summarise_rows(rows)
        all_rows.extend(rows)
    return {"summary": summarise_rows(all_rows), "per_pocket": per_pocket, "rows": all_rows}


def _finite(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f if math.isfinite(f) else float("nan")



class GenerationEvalCallback(Callback):
    """Generate molecules for the validation pockets every ``every_n_steps`` optimizer steps
    (at the validation that follows) and log ``val/validity``, ``val/connectivity``,
    ``val/qed``, ``val/sa`` through the module, so monitors and checkpoints see them.

    ``items``: processed validation complexes. Seeds are fixed, so successive evaluations differ
    only because the model changed.
    """

    def __init__(self, items: Sequence[Mapping[str, Any]], every_n_steps: int, n_samples: int = 4,
                 timesteps: int | None = 50, seed: int = 0, num_atoms: str | int = "reference",
                 batch_size: int = 16):
        self.items = list(items)
        self.every = max(1, int(every_n_steps))
        self.n_samples = int(n_samples)
        self.timesteps = timesteps
        self.seed = int(seed)
        self.num_atoms = num_atoms
        self.batch_size = int(batch_size)
        self.last_step: int | None = None
        self.history: list[dict[str, Any]] = []

    def due(self, step: int, max_steps: int | None) -> bool:
        """At the first validation at or after every ``every_n_steps`` steps, and at the end."""
        if self.last_step == step:
            return False
        if max_steps is not None and step >= max_steps:
            return True
        return step // self.every > (self.last_step or 0) // self.every

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self.items:
            return
        step = int(trainer.global_step)
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if not self.due(step, max_steps):
            # Re-log the latest values so checkpoint selection always finds its metric.
            if self.history:
                for k in (k for k in LOGGED if k in self.history[-1]):
                    pl_module.log(k, self.history[-1][k], on_step=False, on_epoch=True,
                                  batch_size=len(self.items))
            return
        self.last_step = step
        s = summarise_rows(self.rows(pl_module.model))
        values = {k: _finite(s.get(v)) for k, v in LOGGED.items()}
        # QED / SA are undefined without a valid, connected molecule: not logged then (a NaN
        # would read as a numerical failure); validity and connectivity are always defined.
        values = {k: v for k, v in values.items() if math.isfinite(v) or k not in OPTIONAL}
        self.history.append({"step": step, **values})
        for k, v in values.items():
            pl_module.log(k, v, on_step=False, on_epoch=True, batch_size=len(self.items))
        log.info("step %d generation eval: %s", step,
                 ", ".join(f"{k}={v:.3f}" for k, v in values.items()))

    def rows(self, model) -> list[dict[str, Any]]:
        """Every pocket's molecule rows, in pocket order; under DDP each rank generates for its
        shard and the rows are gathered (pocket seeds follow the position in the set, so these
        are the one-process rows)."""
        from moltune.common.training import gather, shard

        mine = shard(len(self.items))
        rows = []
        if len(mine):
            rows = evaluate_pockets(model, [self.items[i] for i in mine], self.n_samples,
                                    self.timesteps, self.seed, self.num_atoms, self.batch_size,
                                    indices=mine)["rows"]  # fmt: skip
        return [r for part in gather(rows) for r in part]

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = state.get("last_step")
        self.history = list(state.get("history", []))
