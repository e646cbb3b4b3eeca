"""The peptides a transport-flow run trains on, and the Lightning pieces over them.

A run trains one flow on a list of peptides; one peptide is the list of one. Each peptide keeps
its own coordinate representation (its atoms' tokens, the standardisation fitted on its own
training frames) and its own energy (float64); with several peptides the flow core -- which sees
a peptide only through its atoms' embeddings and the temperature pair -- is shared.

:class:`TransportDataModule` serves global training batch g from peptide ``g mod P`` (round
robin). Each peptide passes over its training pairs epoch by epoch: every source frame once per
pass, in an order seeded by (seed + p, pass), its target frame drawn from (seed + p, pass, item)
(``moltune.flow.lightning.TrainPairs``). Batch g is so a function of the seed and g alone: DDP
ranks take their share of it (``moltune.common.training.EpochShardSampler``), and a resumed run
draws the batches of the uninterrupted one. Validation uses every peptide's fixed held-out
pairs; a batch never mixes peptides. :class:`PeptideTransportModule` is
``moltune.flow.lightning.TransportModule`` picking the peptide's flow, energy and reference
energies by the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from moltune.common.errors import InputFileError, InvalidInputError
from moltune.flow.lightning import (
    Float64Energy,
    ReferenceEnergies,
    TrainPairs,
    TransportModule,
    Unsaved,
    ValPairs,
    make_pairs,
    neighbour_pairs,
)

__all__ = [
    "TORSION_ORIGINS",
    "PeptideSet",
    "PeptideTransportModule",
    "TrainBatches",
    "TransportDataModule",
    "ValBatches",
    "check_data",
    "fit_representation",
    "load_pt_runs",
    "reference_energies",
    "split_pairs",
]  # fmt: skip

TORSION_ORIGINS = ("zero", "fitted")


# --------------------------------------------------------------------------- data of one peptide
def load_pt_runs(directory: str | list | None, what: str):
    """PT data of one folder, or of several folders (same peptide and ladder) combined."""
    from moltune.physics.ptdata import combine_pt_data, load_pt_data

    if directory is None:
        return None
    dirs = [directory] if isinstance(directory, (str, Path)) else list(directory)
    for d in dirs:
        if not Path(d).exists():
            raise InputFileError(f"{what} folder not found: {d} (make it with `moltune pt "
                                 f"simulate ... --out {d}`)")  # fmt: skip
    data = [load_pt_data(d) for d in dirs]
    return data[0] if len(data) == 1 else combine_pt_data(data)


def subsample(data, max_frames: int | None):
    """At most ``max_frames`` evenly spaced frames per temperature (in place)."""
    if max_frames is None:
        return data
    for k in range(len(data.xyz_nm)):
        idx = np.linspace(0, len(data.xyz_nm[k]) - 1, min(max_frames, len(data.xyz_nm[k])))
        idx = idx.astype(int)
        data.xyz_nm[k] = data.xyz_nm[k][idx]
        data.energy_kjmol[k] = data.energy_kjmol[k][idx]
    return data


def check_data(train_data, test_data, pairs: list | None) -> list[tuple[int, int]]:
    """The temperature pairs to train, refusing data that cannot train them: fewer than two
    temperatures, pairs off the ladder, held-out data of another peptide or ladder."""
    temps = [float(t) for t in train_data.temperatures_K]
    if len(temps) < 2:
        raise InvalidInputError(f"the training data has one temperature ({temps} K); a "
                                "transport flow needs at least two")  # fmt: skip
    out = [tuple(int(v) for v in p) for p in pairs] if pairs else neighbour_pairs(len(temps))
    for p in out:
        if len(p) != 2 or not all(0 <= v < len(temps) for v in p) or p[0] == p[1]:
            raise InvalidInputError(f"pair {list(p)} is not two different indices into the "
                                    f"ladder {temps} K")  # fmt: skip
    if min(len(f) for f in train_data.xyz_nm) < 2:
        raise InvalidInputError("the training data holds fewer than two frames per temperature")
    if test_data is not None:
        atoms = lambda d: [(a.residue.name, a.name) for a in d.topology.atoms()]
        if atoms(test_data) != atoms(train_data):
            raise InvalidInputError("the held-out data is of another peptide than the training "
                                    "data (atoms differ)")  # fmt: skip
        if [float(t) for t in test_data.temperatures_K] != temps:
            raise InvalidInputError(f"the held-out data has the ladder "
                                    f"{list(test_data.temperatures_K)} K, not {temps} K")  # fmt: skip
    return out


def train_cut(train_data, val_fraction: float) -> int:
    """Frames per temperature that train when the last ``val_fraction`` is held out."""
    return round(min(len(f) for f in train_data.xyz_nm) * (1 - val_fraction))


def split_pairs(train_data, test_data, pairs, val_fraction: float):
    """(training pairs, validation pairs): the held-out data's, else the training data's tail."""
    if test_data is not None:
        return make_pairs(train_data, pairs), make_pairs(test_data, pairs)
    cut = train_cut(train_data, val_fraction)
    return make_pairs(train_data, pairs, slice(0, cut)), make_pairs(train_data, pairs,
                                                                    slice(cut, None))  # fmt: skip


def reference_energies(train_sets) -> dict[float, float]:
    """Mean energy (kJ/mol) of the training frames at each temperature."""
    ref: dict[float, list] = {}
    for p in train_sets:
        ref.setdefault(p.t_source_K, []).append(p.u_x)
        ref.setdefault(p.t_target_K, []).append(p.u_y)
    return {t: float(np.mean(np.concatenate(v))) for t, v in ref.items()}


def fit_representation(rep, xyz_nm: np.ndarray, torsion_origin: str = "fitted"):
    """``rep.fit(xyz_nm)``; with ``torsion_origin="zero"`` the circular torsions keep origin 0.

    ``Representation.fit`` centres every torsion on its circular mean over the frames it is
    given; for 2- and 3-fold rotors (NH3+, CH3) that mean is arbitrary and differs between data
    sets, and the learned map is not invariant to it (refitting AA on other frames of the same
    peptide dropped its 300-450 K acceptance from 0.72 to 0.47). ``zero`` keeps the fitted
    standardisation of bonds and angles and every circular torsion at its physical value, the
    same convention on every peptide (the checkpoint records it for refits).
    """
    from moltune.flow.coordinates import CIRCULAR

    if torsion_origin not in TORSION_ORIGINS:
        raise InvalidInputError(f"torsion_origin must be one of {TORSION_ORIGINS}, "
                                f"got {torsion_origin!r}")  # fmt: skip
    rep.fit(xyz_nm)
    if torsion_origin == "zero":
        with torch.no_grad():
            rep.mean[rep.slot_kind == CIRCULAR] = 0.0
    return rep


@dataclass
class PeptideSet:
    """One peptide of a run: its training and validation pairs, flow view, energy, references.

    ``reload`` (optional) returns fresh training pairs (a PT run still growing); it is called
    when the peptide's pass over its training pairs ends."""

    name: str
    data: Any  # PTData (training frames)
    pairs: list  # [(i, j), ...] indices into the ladder
    train_sets: list
    val_sets: list
    flow: torch.nn.Module | None = None  # TransportFlow(own representation, shared core)
    energy: Any = None  # TorchEnergy: [B, N, 3] nm float64 -> U [B] kJ/mol
    u_ref: dict[float, float] | None = None
    reload: Callable[[], list] | None = None

    def training_frames(self) -> np.ndarray:
        """Training frames [F, N, 3] nm of every temperature a pair uses, coldest index first."""
        used = sorted({t for p in self.train_sets for t in (p.t_source_K, p.t_target_K)})
        by_t = {p.t_source_K: p.x for p in self.train_sets} | {
            p.t_target_K: p.y for p in self.train_sets}  # fmt: skip
        return np.concatenate([np.asarray(by_t[t]) for t in used])


# --------------------------------------------------------------------------- batches
@dataclass
class _Pass:
    """One peptide's current pass over its training pairs (this rank's share)."""

    number: int
    first: int  # the peptide's batch count at the start of the pass
    length: int  # batches in the pass
    pairs: TrainPairs
    items: list  # this rank's (pass, item) indices, batch after batch
    shard: tuple[int, int]


class TrainBatches(Dataset):
    """Global training batch g: peptide ``g mod P``'s batch ``g // P`` of its passes (module
    docstring). Items ``(x, y, t_source_K, t_target_K, peptide)``: this rank's share of the
    frames (nm), per-sample temperatures (K, float64) and the peptide's index."""

    def __init__(self, sets: list[PeptideSet], batch_size: int, seed: int):
        self.sets, self.batch_size, self.seed = sets, batch_size, seed
        self._passes: list[_Pass | None] = [None] * len(sets)

    def pass_length(self, p: int) -> int:
        """Batches in one pass over peptide ``p``'s training pairs."""
        return len(TrainPairs(self.sets[p].train_sets)) // self.batch_size

    def _open(self, p: int, number: int, first: int) -> _Pass:
        from moltune.common.training import EpochShardSampler, world

        shard = world()
        pairs = TrainPairs(self.sets[p].train_sets, self.seed + p)
        sampler = EpochShardSampler(len(pairs), self.seed + p, shuffle=True,
                                    per_rank_batch=self.batch_size // shard[1])  # fmt: skip
        sampler.set_epoch(number)
        self._passes[p] = _Pass(number, first, len(pairs) // self.batch_size, pairs,
                                list(sampler), shard)  # fmt: skip
        return self._passes[p]

    def _pass_of(self, p: int, i: int) -> _Pass:
        from moltune.common.training import world

        s = self._passes[p]
        if s is None or i < s.first or s.shard != world():
            length = self.pass_length(p)
            s = self._open(p, i // length, (i // length) * length)
        while i >= s.first + s.length:
            if self.sets[p].reload is not None:
                self.sets[p].train_sets = self.sets[p].reload()
            s = self._open(p, s.number + 1, s.first + s.length)
        return s

    def __len__(self) -> int:
        return sum(self.pass_length(p) for p in range(len(self.sets)))

    def __getitem__(self, g: int):
        p = g % len(self.sets)
        i = g // len(self.sets)
        s = self._pass_of(p, i)
        per_rank = self.batch_size // s.shard[1]
        o = i - s.first
        items = s.items[o * per_rank:(o + 1) * per_rank]
        x, y, ts, tt = default_collate([s.pairs[k] for k in items])
        return x, y, ts, tt, p


class FromBatch(Sampler):
    """Global batch numbers from ``start()`` (batches trained so far) to the end of the epoch
    of ``length`` batches it falls in, so a resumed run and each new epoch carry on."""

    def __init__(self, start: Callable[[], int], length: int):
        self.start, self.length = start, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        first = self.start()
        return iter(range(first, (first // self.length + 1) * self.length))


class ValBatches(Dataset):
    """Every peptide's fixed validation pairs (``moltune.flow.lightning.ValPairs``), numbered
    across peptides; items end with (pair number, peptide index). :meth:`batches`: this rank's
    shard (``moltune.common.training.ShardSampler``) in batches that never mix peptides (atoms
    differ in number)."""

    def __init__(self, sets: list[PeptideSet], n_per_pair: int):
        self.parts = [ValPairs(ps.val_sets, n_per_pair) for ps in sets]
        self.pair0 = np.cumsum([0] + [len(ps.val_sets) for ps in sets])
        self.item0 = np.cumsum([0] + [len(v) for v in self.parts])

    def batches(self, chunk: int) -> list[list[int]]:
        from moltune.common.training import ShardSampler

        mine = np.asarray(list(ShardSampler(len(self))), dtype=int)
        key = np.searchsorted(self.item0, mine, side="right") - 1
        return [part[a:a + chunk].tolist() for p in np.unique(key)
                for part in [mine[key == p]] for a in range(0, len(part), chunk)]  # fmt: skip

    def __len__(self) -> int:
        return int(self.item0[-1])

    def __getitem__(self, k: int):
        key = int(np.searchsorted(self.item0, k, side="right") - 1)
        *item, q = self.parts[key][k - self.item0[key]]
        return (*item, int(self.pair0[key] + q), key)


class TransportDataModule(L.LightningDataModule):
    """Training batches (:class:`TrainBatches`; one epoch: as many batches as one pass over
    every peptide's pairs) and every peptide's validation pairs (:class:`ValBatches`)."""

    def __init__(self, sets: list[PeptideSet], batch_size: int = 128, val_pairs: int = 2000,
                 seed: int = 0):  # fmt: skip
        super().__init__()
        self.sets, self.batch_size, self.val_pairs, self.seed = sets, batch_size, val_pairs, seed
        self.batches = TrainBatches(sets, batch_size, seed)
        self.epoch_batches = max(1, len(self.batches))

    def _batches_done(self) -> int:
        """Training batches drawn so far: optimiser steps plus skipped (non-finite) steps."""
        trainer = self.trainer
        if trainer is None or trainer.lightning_module is None:
            return 0
        return int(trainer.global_step) + int(trainer.lightning_module.skipped_steps)

    def train_dataloader(self):
        from moltune.common.training import world

        size = world()[1]
        if self.batch_size % size:
            raise InvalidInputError(f"batch size {self.batch_size} is not divisible by the "
                                    f"{size} processes (the batch is global)")  # fmt: skip
        return DataLoader(self.batches, batch_size=None,
                          sampler=FromBatch(self._batches_done, self.epoch_batches),
                          num_workers=0)  # fmt: skip

    def val_dataloader(self):
        ds = ValBatches(self.sets, self.val_pairs)
        return DataLoader(ds, batch_sampler=ds.batches(max(self.batch_size, 256)), num_workers=0)


# --------------------------------------------------------------------------- the module
class PeptideTransportModule(TransportModule):
    """:class:`~moltune.flow.lightning.TransportModule` over the peptides of a run.

    ``self.flow`` is the first peptide's flow, so the state dict holds ``flow.*`` as for one
    peptide; the other peptides' flows (same core) are plain attributes, their representations
    saved as ``peptide_representations``. A batch's last item (its peptide) picks the flow, the
    energy and the reference energies; with several peptides validation metrics are tagged
    ``NAME_TS_TT`` and ``train/peptide`` logs which peptide each batch trained.
    """

    def __init__(self, sets: list[PeptideSet], **kwargs):
        super().__init__(sets[0].flow, sets[0].energy, sets[0].u_ref, **kwargs)
        self.peptides = list(sets)  # a list: no submodules, so no extra state-dict keys
        # every peptide's energy, reference energies and representation move with the module
        self.energies = torch.nn.ModuleList(
            [self.energy] + [Float64Energy(ps.energy) for ps in sets[1:]])
        self.references = torch.nn.ModuleList(
            [self.reference] + [ReferenceEnergies(ps.u_ref) for ps in sets[1:]])
        self.representations = Unsaved(torch.nn.ModuleList(
            [ps.flow.representation for ps in sets]))  # saved as peptide_representations
        if len(sets) > 1:
            tags = [f"{ps.name}_{p.t_source_K:g}_{p.t_target_K:g}" for ps in sets
                    for p in ps.val_sets]  # fmt: skip
            self.pair_tags = dict(enumerate(tags))

    def system(self, key: int | None = None):
        k = key or 0
        return self.peptides[k].flow, self.energies[k], self.references[k]

    def _log_step(self, **kw) -> None:
        """``metrics.csv``'s step: batches trained so far (optimiser steps + skipped steps), so
        a validation row's step is that of the weights it validated (and its epoch)."""
        self.log("step", float(self.global_step + int(self.skipped_steps)), sync_dist=True, **kw)
        self.log("epoch", float(self.current_epoch), sync_dist=True, **kw)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        kw = {"on_step": True, "on_epoch": False, "batch_size": batch[0].shape[0]}
        if len(self.peptides) > 1:  # index into the config's peptides
            self.log("train/peptide", float(batch[-1]), sync_dist=True, **kw)
        self._log_step(**kw)
        return loss

    def on_validation_epoch_end(self) -> None:
        self._log_step()
        super().on_validation_epoch_end()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["peptide_representations"] = {
            ps.name: {k: v.detach().clone() for k, v in ps.flow.representation.state_dict().items()}
            for ps in self.peptides
        }  # fmt: skip
        score = self.trainer.callback_metrics.get("val/acceptance_flow") if self._trainer else None
        hp = checkpoint.get("hyper_parameters") or {}
        if "moltune" in hp:  # this checkpoint's own validation acceptance
            checkpoint["hyper_parameters"] = {
                **hp, "moltune": {**hp["moltune"], "score": None if score is None else float(score)}
            }  # fmt: skip

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("peptide_representations") or {}
        for ps in self.peptides:
            if ps.name in saved:
                ps.flow.representation.load_state_dict(saved[ps.name])
