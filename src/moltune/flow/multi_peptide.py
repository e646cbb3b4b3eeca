"""One transport flow for several peptides (issue 4, transfer): a shared TarFlow core.

Why not ``moltune.flow.train`` as it is: that takes the PT data of one system (one topology, one
energy). Here every peptide keeps its own coordinate representation (its atoms' tokens and the
standardisation fitted on its own frames) and its own energy (Amber14 + OBC2, float64), while the
TarFlow core -- which sees a peptide only through its atoms' embeddings and the temperature pair
-- is shared. Training runs under Lightning with the single-peptide module:
:class:`MultiTransportModule` is ``moltune.flow.lightning.TransportModule`` (same loss
``moltune.flow.losses.transport_terms``, skipped non-finite steps, clipping, warm-up + cosine
schedule, validation metrics) picking the peptide's flow, energy and reference energies by the
batch; :class:`MultiTransportDataModule` serves global batch k from peptide ``k mod P`` (round
robin), mixing its configured temperature pairs (each DDP rank its share of batch k), and every
peptide's held-out pairs for validation. The run lifecycle (run folder, hardware, loggers,
resume, metric rows) is ``moltune.common.training``'s, as for every trainer. The
per-coordinate layer has one parameter per coordinate of one molecule, so it cannot be shared:
``per_coordinate`` must be false.

Run folder (``moltune.common.run.RunDir``): ``metrics.csv`` (step = batches trained; step 0 is
the initial core), ``checkpoints/best.ckpt`` (highest mean validation acceptance over every
peptide and pair, step 0 included) and ``last.ckpt`` (both written atomically, right after a
validation), ``plots/acceptance.png``, ``train_summary.json``, red flags as in
``moltune.flow.train``. ``resume=True`` (``--resume``) continues from ``last.ckpt``: the batches,
the optimiser and the schedule carry on as if uninterrupted; ``max_minutes`` counts the whole
run, as in ``moltune pt train``.

Checkpoints use the layout :func:`moltune.flow.checkpoint.load_flow` reads:
``state_dict["flow.core.*"]`` (the shared weights), ``flow.representation.*`` of the first
peptide and ``hyper_parameters["moltune"]`` (flow config, the first peptide's topology, the
ladder, the pairs, ``torsion_origin``, ``score``: this checkpoint's validation acceptance); the
peptides' representations are kept under ``peptide_representations``. So ``moltune pt transfer
--flow RUN`` (any peptide; the standardisation is refitted on that peptide's frames) and
``moltune pt sample --flow RUN`` (the first peptide) take the run as it is. ``init`` starts the
core from such a checkpoint (fine-tuning on an unseen peptide).

Torsion origin. ``Representation.fit`` centres every torsion on its circular mean over the
frames it is given. For 2- and 3-fold rotors (NH3+, CH3, ...) that mean is arbitrary and changes
from one data set to another (AA train vs test data: up to 1.6 rad), and the learned map is not
invariant to it: refitting on other frames of the *same* peptide dropped AA's 300-450 K
acceptance from 0.72 to 0.47. ``torsion_origin: zero`` (:func:`fit_representation`) keeps the
fitted standardisation of bonds and angles but leaves every circular torsion at its physical
value (origin 0), the same convention on every peptide; the checkpoint records it so
``moltune.flow.pt_sampler.run_flow_factory`` refits unseen peptides the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset, Sampler

from moltune.common.errors import InvalidInputError
from moltune.common.training import TrainerConfig
from moltune.flow.checkpoint import FlowConfig
from moltune.flow.lightning import Float64Energy, ReferenceEnergies, TransportModule, Unsaved
from moltune.flow.train import load_pt_runs

log = logging.getLogger(__name__)

__all__ = [
    "MultiTrainConfig", "MultiTransportDataModule", "MultiTransportModule", "PeptideSet",
    "load_peptide_sets", "train_multi",
]  # fmt: skip


@dataclass
class MultiTrainConfig:
    """A multi-peptide transport-flow run (defaults <- preset YAML <- CLI flags).

    ``peptides`` maps a name to ``{"train_dir": DIR or [DIR, ...], "test_dir": DIR or null}``
    (``moltune pt simulate`` folders of one ladder, relative to ``data_root`` as in
    ``moltune.flow.train.DataConfig``; ``simulate`` their recipes); without ``test_dir`` the last
    ``val_fraction`` of each temperature's frames is held out for validation.
    """

    flow: FlowConfig = field(default_factory=lambda: FlowConfig(n_blocks=2, per_coordinate=False))
    peptides: dict = field(default_factory=dict)
    pairs: list | None = None  # [[i, j], ...] ladder indices; None = neighbours
    val_pairs: int = 200  # validation frame pairs per peptide and temperature pair
    val_fraction: float = 0.1
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_fraction: float = 0.05
    grad_clip: float = 10.0
    energy_cut_kT: float = 1000.0
    steps: int = 2000
    max_minutes: float | None = 30.0
    val_every_steps: int = 100
    seed: int = 0
    threads: int = 1
    solvent: str = "obc2"
    init: str | None = None  # checkpoint / run whose shared core starts this run
    torsion_origin: str = "zero"  # "zero" (physical torsions) or "fitted" (circular means)
    monitors: dict = field(default_factory=dict)  # moltune.validation.monitors.MonitorConfig
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data_root: str | None = None
    simulate: dict = field(default_factory=dict)


def _peptide_spec(name: str, spec) -> dict:
    spec = {"train_dir": spec} if isinstance(spec, (str, list)) else dict(spec or {})
    unknown = set(spec) - {"train_dir", "test_dir"}
    if unknown or not spec.get("train_dir"):
        raise InvalidInputError(f"peptide {name}: expected train_dir (and test_dir), got "
                                f"{sorted(spec)}")  # fmt: skip
    return spec


def _resolved(spec: dict, root) -> dict:
    from moltune.common.training import resolve_data

    t = spec["train_dir"]
    t = [resolve_data(d, root) for d in t] if isinstance(t, list) else resolve_data(t, root)
    test = resolve_data(spec["test_dir"], root) if spec.get("test_dir") else None
    return {"train_dir": t, "test_dir": test}


def peptide_folders(cfg: MultiTrainConfig) -> list[str]:
    """Every PT data folder the run reads, resolved against the data root."""
    out: list[str] = []
    for name, spec in cfg.peptides.items():
        r = _resolved(_peptide_spec(name, spec), cfg.data_root)
        out += r["train_dir"] if isinstance(r["train_dir"], list) else [r["train_dir"]]
        out += [r["test_dir"]] if r["test_dir"] else []
    return out


def check_multi_config(cfg: MultiTrainConfig) -> None:
    """Refuse settings that cannot train (before anything is created)."""
    from moltune.common.training import check_positive, check_trainer_config

    if not cfg.peptides or not isinstance(cfg.peptides, dict):
        raise InvalidInputError("no peptides configured (peptides: {NAME: {train_dir: DIR}})")
    for name, spec in cfg.peptides.items():
        _peptide_spec(name, spec)
    if not cfg.init and (cfg.flow.name != "tarflow" or cfg.flow.per_coordinate):
        raise InvalidInputError("multi-peptide training needs flow.name tarflow with "
                                "per_coordinate: false (that layer is peptide-specific)")  # fmt: skip
    if isinstance(cfg.steps, bool) or not isinstance(cfg.steps, int) or cfg.steps < 0:
        raise InvalidInputError(f"steps must be an integer >= 0, got {cfg.steps!r}")
    for name in ("batch_size", "val_every_steps", "val_pairs", "threads"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidInputError(f"{name} must be an integer >= 1, got {v!r}")
    check_positive(lr=cfg.lr, grad_clip=cfg.grad_clip, max_minutes=cfg.max_minutes,
                   energy_cut_kT=cfg.energy_cut_kT)  # fmt: skip
    if not (0 < cfg.val_fraction < 1):
        raise InvalidInputError(f"val_fraction must be in (0, 1), got {cfg.val_fraction!r}")
    if cfg.torsion_origin not in TORSION_ORIGINS:
        raise InvalidInputError(f"torsion_origin must be one of {TORSION_ORIGINS}, "
                                f"got {cfg.torsion_origin!r}")  # fmt: skip
    check_trainer_config(cfg.trainer)
    if cfg.monitors:
        from moltune.common.config import from_dict
        from moltune.validation.monitors import MonitorConfig

        from_dict(MonitorConfig, dict(cfg.monitors), "monitors")


@dataclass
class PeptideSet:
    """One peptide's training and validation pairs, its flow view, energy and reference energies."""

    name: str
    data: Any  # PTData (training frames)
    train_sets: list
    val_sets: list
    flow: torch.nn.Module  # TransportFlow(own representation, shared core)
    energy: Any  # TorchEnergy: [B, N, 3] nm float64 -> U [B] kJ/mol
    u_ref: dict[float, float]


TORSION_ORIGINS = ("zero", "fitted")


def fit_representation(rep, xyz_nm: np.ndarray, torsion_origin: str = "fitted"):
    """``rep.fit(xyz_nm)``; with ``torsion_origin="zero"`` the circular torsions keep origin 0."""
    from moltune.flow.coordinates import CIRCULAR

    if torsion_origin not in TORSION_ORIGINS:
        raise InvalidInputError(f"torsion_origin must be one of {TORSION_ORIGINS}, "
                                f"got {torsion_origin!r}")  # fmt: skip
    rep.fit(xyz_nm)
    if torsion_origin == "zero":
        with torch.no_grad():
            rep.mean[rep.slot_kind == CIRCULAR] = 0.0
    return rep


def load_peptide_sets(cfg: MultiTrainConfig, core: torch.nn.Module) -> list[PeptideSet]:
    """Each configured peptide's pairs, with a flow view sharing ``core`` (representation fitted
    on that peptide's training frames of every temperature used)."""
    from moltune.flow.coordinates import make_representation
    from moltune.flow.lightning import make_pairs, neighbour_pairs
    from moltune.flow.models import TransportFlow
    from moltune.physics.energy import TorchEnergy

    if not cfg.peptides:
        raise InvalidInputError("no peptides configured (peptides: {NAME: {train_dir: DIR}})")
    sets, ladder = [], None
    for name, spec in cfg.peptides.items():
        spec = _resolved(_peptide_spec(name, spec), cfg.data_root)
        data = load_pt_runs(spec["train_dir"], f"{name} training data")
        temps = [float(t) for t in data.temperatures_K]
        if len(temps) < 2:
            raise InvalidInputError(f"peptide {name}: the data has one temperature ({temps} K)")
        if ladder is None:
            ladder = temps
        elif temps != ladder:
            raise InvalidInputError(f"peptide {name} has the ladder {temps} K, not {ladder} K")
        pairs = [tuple(p) for p in cfg.pairs] if cfg.pairs else neighbour_pairs(len(temps))
        for p in pairs:
            if len(p) != 2 or not all(0 <= v < len(temps) for v in p) or p[0] == p[1]:
                raise InvalidInputError(f"pair {list(p)} is not two different indices into "
                                        f"the ladder {temps} K")  # fmt: skip
        if spec.get("test_dir"):
            test = load_pt_runs(spec["test_dir"], f"{name} held-out data")
            atoms = lambda d: [(a.residue.name, a.name) for a in d.topology.atoms()]
            if atoms(test) != atoms(data) or [float(t) for t in test.temperatures_K] != temps:
                raise InvalidInputError(f"peptide {name}: the held-out data is of another "
                                        "peptide or ladder than its training data")  # fmt: skip
            train_sets, val_sets = make_pairs(data, pairs), make_pairs(test, pairs)
        else:
            n = min(len(f) for f in data.xyz_nm)
            cut = round(n * (1 - cfg.val_fraction))
            train_sets = make_pairs(data, pairs, slice(0, cut))
            val_sets = make_pairs(data, pairs, slice(cut, None))
        rep = make_representation(cfg.flow.representation, data.topology)
        used = sorted({t for p in pairs for t in p})
        fit_representation(rep, np.concatenate([np.asarray(data.xyz_nm[k]) for k in used]),
                           cfg.torsion_origin)
        energy = TorchEnergy.from_topology(data.topology, solvent=cfg.solvent).double()
        ref: dict[float, list] = {}
        for p in train_sets:
            ref.setdefault(p.t_source_K, []).append(p.u_x)
            ref.setdefault(p.t_target_K, []).append(p.u_y)
        sets.append(PeptideSet(
            name, data, train_sets, val_sets, TransportFlow(rep, core), energy,
            {t: float(np.mean(np.concatenate(v))) for t, v in ref.items()},
        ))  # fmt: skip
    return sets


class RoundRobinBatches(Dataset):
    """Batch k: ``batch_size`` random (x, y) of peptide ``k mod P``, its pairs mixed at random.

    Each global batch is a function of (seed, k) alone, so a resumed run draws the batches the
    interrupted one would have drawn, and under DDP rank r of W takes its items r, r + W, ...
    (``shard``: (rank, world size); default: this process's). Items are
    ``(x, y, t_source_K, t_target_K, peptide)`` (float64 nm, per-sample temperatures, the
    peptide's index).
    """

    def __init__(self, sets: list[PeptideSet], batch_size: int, seed: int, length: int,
                 shard: tuple[int, int] | None = None):  # fmt: skip
        self.sets, self.batch_size, self.seed, self.length = sets, batch_size, seed, length
        self.shard = shard

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int):
        key = k % len(self.sets)
        pairs = self.sets[key].train_sets
        rng = np.random.default_rng([self.seed, k])
        q = rng.integers(len(pairs), size=self.batch_size)
        xs, ys, ts, tt = [], [], [], []
        for j, p in enumerate(pairs):
            m = int((q == j).sum())
            if m:
                xs.append(p.x[rng.integers(len(p.x), size=m)])
                ys.append(p.y[rng.integers(len(p.y), size=m)])
                ts += [p.t_source_K] * m
                tt += [p.t_target_K] * m
        from moltune.common.training import world

        rank, size = self.shard or world()
        f64 = torch.float64
        x, y = torch.cat(xs).double(), torch.cat(ys).double()
        ts_t, tt_t = torch.tensor(ts, dtype=f64), torch.tensor(tt, dtype=f64)
        return x[rank::size], y[rank::size], ts_t[rank::size], tt_t[rank::size], key


class _FromBatch(Sampler):
    """Global batch numbers ``start(), ..., start() + length - 1``: one epoch is the rest of the
    run (``start``: batches drawn so far, so a resumed run and a new epoch carry on)."""

    def __init__(self, start, length: int):
        self.start, self.length = start, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        first = self.start()
        return iter(range(first, first + self.length))


class MultiValPairs(Dataset):
    """Every peptide's fixed validation pairs (``moltune.flow.lightning.ValPairs``), numbered
    across peptides; items end with (pair number, peptide index)."""

    def __init__(self, sets: list[PeptideSet], n_per_pair: int, chunk: int):
        from moltune.flow.lightning import ValPairs

        self.parts = [ValPairs(ps.val_sets, n_per_pair) for ps in sets]
        self.pair0 = np.cumsum([0] + [len(ps.val_sets) for ps in sets])
        self.item0 = np.cumsum([0] + [len(v) for v in self.parts])
        # batches never mix peptides (atoms differ in number)
        self.batches = [list(range(a, min(a + chunk, b)))
                        for a0, b in zip(self.item0[:-1], self.item0[1:])
                        for a in range(int(a0), int(b), chunk)]  # fmt: skip

    def __len__(self) -> int:
        return int(self.item0[-1])

    def __getitem__(self, k: int):
        key = int(np.searchsorted(self.item0, k, side="right") - 1)
        *item, q = self.parts[key][k - self.item0[key]]
        return (*item, int(self.pair0[key] + q), key)


class MultiTransportDataModule(L.LightningDataModule):
    """Round-robin training batches (:class:`RoundRobinBatches`, one epoch = the whole run of
    ``steps`` batches, resumed where the checkpoint stopped) and every peptide's validation
    pairs."""

    def __init__(self, sets: list[PeptideSet], batch_size: int, val_pairs: int, seed: int,
                 steps: int):  # fmt: skip
        super().__init__()
        self.sets, self.batch_size, self.val_pairs = sets, batch_size, val_pairs
        self.seed, self.steps = seed, steps

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
        ds = RoundRobinBatches(self.sets, self.batch_size, self.seed, max(1, self.steps))
        return DataLoader(ds, batch_size=None, sampler=_FromBatch(self._batches_done, len(ds)),
                          num_workers=0)  # fmt: skip

    def val_dataloader(self):
        ds = MultiValPairs(self.sets, self.val_pairs, max(self.batch_size, 256))
        return DataLoader(ds, batch_sampler=ds.batches, num_workers=0)


class MultiTransportModule(TransportModule):
    """:class:`~moltune.flow.lightning.TransportModule` over several peptides sharing one core.

    ``self.flow`` is the first peptide's flow, so the state dict holds ``flow.core.*`` and that
    peptide's ``flow.representation.*``; the other peptides' flows (same core) are plain
    attributes, their representations saved as ``peptide_representations``. A batch's last
    item (its peptide) picks the flow, the energy and the reference energies.
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
        self.pair_tags = {}
        for ps in sets:
            for p in ps.val_sets:
                self.pair_tags[len(self.pair_tags)] = f"{ps.name}_{p.t_source_K:g}_{p.t_target_K:g}"

    def system(self, key: int | None = None):
        k = key or 0
        return self.peptides[k].flow, self.energies[k], self.references[k]

    def _log_step(self, **kw) -> None:
        """``metrics.csv``'s step: batches trained so far (optimiser steps + skipped steps)."""
        self.log("step", float(self.global_step + int(self.skipped_steps)), sync_dist=True, **kw)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        kw = {"on_step": True, "on_epoch": False, "batch_size": batch[0].shape[0]}
        self.log("train/peptide", float(batch[-1]), sync_dist=True, **kw)  # index into the config's peptides
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


class _StopAtLastStep(Callback):
    """Stop (and so validate and checkpoint) after the last step even between validations."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


def _init_core(spec: str) -> tuple[dict, dict, str]:
    """(core weights, flow_config, torsion origin) of a transport-flow checkpoint or run (read
    by the one reader, ``moltune.flow.checkpoint.load_flow``)."""
    from moltune.flow.checkpoint import load_flow

    flow, info = load_flow(spec)
    if info["flow_config"].get("per_coordinate"):
        raise InvalidInputError(f"{info['path']}: a per-coordinate flow is peptide-specific; "
                                "cannot start a multi-peptide run from it")  # fmt: skip
    core = {k: v.detach().clone() for k, v in flow.core.state_dict().items()}
    return core, info["flow_config"], info.get("torsion_origin", "fitted")


def _metadata(cfg: MultiTrainConfig, sets: list[PeptideSet]) -> dict:
    """``hyper_parameters["moltune"]``: what ``load_flow`` needs, of the first peptide."""
    from moltune.flow.checkpoint import FORMAT, _pdb_text

    first = sets[0]
    pairs = [[int(a) for a in p] for p in (cfg.pairs or [[i, i + 1] for i in
             range(len(first.data.temperatures_K) - 1)])]  # fmt: skip
    return {
        "format": FORMAT,
        "flow": cfg.flow.name,
        "name": f"{cfg.flow.name}/{cfg.flow.representation} ({'+'.join(s.name for s in sets)})",
        "flow_config": dataclasses.asdict(cfg.flow),
        "config": dataclasses.asdict(cfg),
        "topology_pdb": _pdb_text(first.data.topology, first.data.xyz_nm[0][0]),
        "temperatures_K": [float(t) for t in first.data.temperatures_K],
        "pairs": pairs,
        "pair": pairs[0],
        "train_data": str({s.name: cfg.peptides[s.name] for s in sets}),
        "test_data": None,
        "solvent": cfg.solvent,
        "peptides": [s.name for s in sets],
        "torsion_origin": cfg.torsion_origin,
    }


def _callbacks(cfg: MultiTrainConfig, run) -> list:
    """Red-flag monitors (as ``moltune.flow.train``) and best/last checkpoints."""
    from moltune.validation.monitors import GuardedModelCheckpoint, default_monitors

    callbacks: list = default_monitors(cfg.monitors or None, run.path)
    callbacks.append(GuardedModelCheckpoint(
        dirpath=run.checkpoints, filename="best", monitor="val/acceptance_flow", mode="max",
        save_top_k=1, save_last=True, save_on_train_epoch_end=False,
        auto_insert_metric_name=False, enable_version_counter=False,
    ))  # fmt: skip
    return callbacks + [_StopAtLastStep(cfg.steps)]


def _save_start(trainer, ckpt_cb, score: float) -> None:
    """Step-0 best.ckpt and last.ckpt (the initial core may stay the best: fine-tuning), made
    known to the checkpoint callback so that training replaces best only when it beats them."""
    best = ckpt_cb.format_checkpoint_name({})
    trainer.save_checkpoint(best, weights_only=False)
    value = torch.tensor(score)
    ckpt_cb.best_k_models = {best: value}
    ckpt_cb.kth_best_model_path, ckpt_cb.kth_value = best, value
    ckpt_cb.best_model_path, ckpt_cb.best_model_score = best, value
    ckpt_cb.last_model_path = ckpt_cb.format_checkpoint_name({}, filename="last")
    trainer.save_checkpoint(ckpt_cb.last_model_path, weights_only=False)


def train_multi(cfg: MultiTrainConfig, out: str | Path, progress: bool = True,
                resume: bool = False) -> dict | None:  # fmt: skip
    """Train the shared core on every configured peptide into run folder ``out`` (Lightning);
    returns the summary (also ``train_summary.json``; ``None`` on DDP ranks other than 0), with
    ``metrics.csv`` and ``plots/acceptance.png``. ``resume=True`` continues from
    ``RUN/checkpoints/last.ckpt``. Everything is checked before the folder is created."""
    import warnings

    from lightning.pytorch.callbacks import ModelCheckpoint

    from moltune.common.config import from_dict
    from moltune.common.io import write_json
    from moltune.common.run import package_versions
    from moltune.common.training import (
        check_run_folder,
        finish_logging,
        is_rank_zero,
        make_trainer,
        open_run,
        read_metrics,
    )  # fmt: skip
    from moltune.flow.checkpoint import build_flow
    from moltune.flow.models import count_parameters

    check_multi_config(cfg)
    last = check_run_folder(out, resume)
    init_weights = None
    if cfg.init:
        init_weights, flow_cfg, origin = _init_core(cfg.init)
        cfg = dataclasses.replace(cfg, flow=from_dict(FlowConfig, flow_cfg, "flow"),
                                  torsion_origin=origin)  # the convention the core learned
    if last is not None:
        meta = torch.load(last, map_location="cpu", weights_only=True)["hyper_parameters"]
        if meta["moltune"].get("peptides") != list(cfg.peptides):
            raise InvalidInputError(f"cannot resume {out} with peptides {list(cfg.peptides)}:"
                                    f" it trains {meta['moltune'].get('peptides')}")  # fmt: skip
    torch.set_num_threads(max(1, int(cfg.threads)))
    torch.set_flush_denormal(True)
    L.seed_everything(cfg.seed, verbose=False)
    first = _resolved(_peptide_spec(*next(iter(cfg.peptides.items()))), cfg.data_root)
    core = build_flow(cfg.flow, load_pt_runs(first["train_dir"], "training data").topology).core
    if init_weights is not None:
        core.load_state_dict(init_weights)
    sets = load_peptide_sets(cfg, core)
    dm = MultiTransportDataModule(sets, cfg.batch_size, cfg.val_pairs, cfg.seed, cfg.steps)
    module = MultiTransportModule(
        sets, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
        total_steps=cfg.steps, grad_clip=cfg.grad_clip, cut_kT=cfg.energy_cut_kT,
        min_lr_fraction=cfg.min_lr_fraction, hparams={"moltune": _metadata(cfg, sets)},
    )  # fmt: skip
    run = open_run(out, cfg)
    previous = read_metrics(run.metrics) if last is not None and is_rank_zero() else None
    callbacks = _callbacks(cfg, run)
    ckpt_cb = next(c for c in callbacks if isinstance(c, ModelCheckpoint))
    trainer = make_trainer(
        cfg.trainer, run, callbacks, progress=progress, flush_every=cfg.val_every_steps,
        max_epochs=-1, max_steps=cfg.steps,
        max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
        val_check_interval=cfg.val_every_steps, check_val_every_n_epoch=None,
        use_distributed_sampler=False,  # RoundRobinBatches gives each rank its share
    )  # fmt: skip
    t0 = time.time()
    with warnings.catch_warnings():
        # (the round-robin sampler resumes at the checkpoint's batch; the step-0 checkpoints
        # are in the checkpoint folder by design)
        warnings.filterwarnings("ignore", ".*(does not have many workers|exists and is not empty"
                                "|dataloader is not resumable)")  # fmt: skip
        if last is None:  # step 0: the initial core (identity, or the --init run's) validated
            trainer.validate(module, datamodule=dm, verbose=False)
            score = float(trainer.callback_metrics["val/acceptance_flow"])
            _save_start(trainer, ckpt_cb, score)
        if cfg.steps > 0:
            trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last else None,
                        weights_only=True)  # fmt: skip
    minutes = (time.time() - t0) / 60.0
    finish_logging(trainer, run, previous)
    if not trainer.is_global_zero:
        return None
    rows = pd.read_csv(run.metrics).dropna(subset=["val/acceptance_flow"])
    val = lambda r: {k: float(v) for k, v in r.items() if k.startswith("val/") and pd.notna(v)}
    summary = {
        "steps": int(trainer.global_step), "minutes": minutes,
        "skipped_steps": int(module.skipped_steps), "n_parameters": count_parameters(core),
        "peptides": [s.name for s in sets], "init": cfg.init, "resumed": resume,
        "best_val_acceptance_flow": float(ckpt_cb.best_model_score),
        "start": val(rows.iloc[0]), "last": val(rows.iloc[-1]),
        "best_checkpoint": str(ckpt_cb.best_model_path), "world_size": trainer.world_size,
        "versions": package_versions(),
    }  # fmt: skip
    write_json(run.path / "train_summary.json", summary)
    plot_multi(run.path)
    log.info("step %d: validation acceptance %.3f -> best %.3f (naive %.3f)", summary["steps"],
             summary["start"]["val/acceptance_flow"], summary["best_val_acceptance_flow"],
             summary["start"]["val/acceptance_naive"])  # fmt: skip
    return summary


def plot_multi(run_path: str | Path) -> Path | None:
    """Validation acceptance (flow solid, naive dashed) per peptide and pair against step, and
    each peptide's training loss (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import yaml

    from moltune.common.io import atomic_path

    run_path = Path(run_path)
    if not (run_path / "metrics.csv").exists():
        return None
    df = pd.read_csv(run_path / "metrics.csv")
    cols = [c for c in df.columns if c.startswith("val/acceptance_flow_")]
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4))
    for c in cols:
        d = df[["step", c]].dropna()
        line = a0.plot(d["step"], d[c], "o-", ms=3, label=c.removeprefix("val/acceptance_flow_"))
        naive = c.replace("flow", "naive")
        if naive in df:
            dn = df[["step", naive]].dropna()
            a0.plot(dn["step"], dn[naive], "--", color=line[0].get_color(), lw=0.8)
    a0.set_xlabel("step")
    a0.set_ylabel("validation swap acceptance (dashed: naive)")
    a0.set_ylim(0, 1)
    a0.legend(fontsize=6, ncol=2)
    if {"train/loss", "train/peptide"} <= set(df.columns):
        names = list(yaml.safe_load((run_path / "config.yaml").read_text())["peptides"])
        d = df[["step", "train/loss", "train/peptide"]].dropna()
        for k, g in d.groupby("train/peptide"):
            label = names[int(k)] if int(k) < len(names) else f"peptide {int(k)}"
            a1.plot(g["step"], g["train/loss"].rolling(10, min_periods=1).mean(), label=label)
    if "val/loss" in df:  # fixed held-out pairs: the curve to read (batches mix pairs)
        d = df[["step", "val/loss"]].dropna()
        a1.plot(d["step"], d["val/loss"], "ko-", ms=3, label="validation (mean)")
    a1.set_xlabel("step")
    a1.set_ylabel("loss (kT; training: rolling mean of 10 batches)")
    if a1.lines:
        a1.legend(fontsize=7)
    fig.tight_layout()
    path = run_path / "plots" / "acceptance.png"
    path.parent.mkdir(exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
