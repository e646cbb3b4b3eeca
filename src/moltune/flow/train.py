"""Train a temperature-transport flow on replica-exchange data (Lightning) into a run folder.

``train(cfg, out)`` resolves the data, builds the flow (fitting the representation's
standardisation on the training frames), and runs Lightning with a CSV logger
(``RUN/metrics.csv``), atomic top-k + last checkpoints (monitor ``val/acceptance_flow``), the
project's red-flag monitors (``moltune.validation.monitors``) and loss/acceptance plots.
``resume=True`` continues from ``RUN/checkpoints/last.ckpt``. The run lifecycle (settings and
folder checked before anything is created, hardware from ``trainer``, loggers, metric rows kept
across a resume) is ``moltune.common.training``'s; ``batch_size`` is the global batch, split over
DDP processes.

Limits: ``epochs`` (passes over the training frames), ``steps`` (optimiser steps) and
``max_minutes`` (wall clock); whichever comes first ends the run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moltune.common.errors import InputFileError, InvalidInputError
from moltune.common.training import TrainerConfig
from moltune.flow.checkpoint import FlowConfig, build_flow

__all__ = ["DataConfig", "FlowConfig", "TrainConfig", "build_flow", "check_config", "train"]

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Replica-exchange data (``moltune pt simulate`` folders) and which temperature pairs.

    Folders are named relative to the data root (``root``: ``--data-root``, else
    ``$MOLTUNE_DATA``, else ``./data``); ``simulate`` maps a folder name to the
    ``moltune pt simulate`` arguments that make it (named in the error when it is missing, run
    by ``--simulate-missing``).
    """

    train_dir: str | list = "aa_pt_train"  # one PT folder, or several of one system
    test_dir: str | None = "aa_pt_test"  # held-out (independent) validation frames
    pairs: list | None = None  # [[i, j], ...] indices into the ladder; None = neighbours
    val_pairs: int = 2000  # validation pairs per temperature pair
    val_fraction: float = 0.1  # held-out tail when test_dir is None
    max_frames: int | None = None  # at most this many frames per temperature for training
    reload_every_epoch: bool = False  # re-read train_dir each epoch (PT run still growing)
    root: str | None = None
    simulate: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Everything a transport-flow run needs (defaults <- preset YAML <- CLI flags)."""

    flow: FlowConfig = field(default_factory=FlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    batch_size: int = 128  # global: split over the DDP processes
    lr: float = 2e-3
    fast_lr_factor: float = 10.0  # learning-rate factor of the per-coordinate layer
    moment_start: bool = True  # start the per-coordinate layer from a Gaussian (ML) fit
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_fraction: float = 0.05
    grad_clip: float = 10.0
    energy_cut_kT: float = 1000.0
    epochs: int | None = None
    steps: int | None = None
    max_minutes: float | None = 55.0
    val_every_steps: int = 200
    validate: bool = True
    top_k: int = 3
    seed: int = 0
    threads: int = 1  # torch CPU threads (1 is fastest on a shared 2-core machine)
    solvent: str = "obc2"
    monitors: dict = field(default_factory=dict)  # moltune.validation.monitors.MonitorConfig


FLOWS = ("baseline_ic", "spline_ic", "tarflow")
REPRESENTATIONS = ("internal", "cartesian")


def check_config(cfg: TrainConfig) -> None:
    """Refuse a setting that cannot train (before anything is created)."""
    from moltune.common.training import check_positive, check_trainer_config

    for name in ("steps", "epochs"):
        v = getattr(cfg, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InvalidInputError(f"{name} must be an integer >= 1, got {v!r}")
    for name in ("batch_size", "val_every_steps", "threads"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidInputError(f"{name} must be an integer >= 1, got {v!r}")
    check_positive(lr=cfg.lr, grad_clip=cfg.grad_clip, energy_cut_kT=cfg.energy_cut_kT,
                   max_minutes=cfg.max_minutes, fast_lr_factor=cfg.fast_lr_factor)  # fmt: skip
    if not isinstance(cfg.warmup_steps, int) or cfg.warmup_steps < 0:
        raise InvalidInputError(f"warmup_steps must be an integer >= 0, got {cfg.warmup_steps!r}")
    if not (0 <= cfg.min_lr_fraction <= 1) or cfg.weight_decay < 0:
        raise InvalidInputError("min_lr_fraction must be in [0, 1] and weight_decay >= 0")
    if not isinstance(cfg.top_k, int) or cfg.top_k < 1:
        raise InvalidInputError(f"top_k must be an integer >= 1, got {cfg.top_k!r}")
    if cfg.flow.name not in FLOWS or cfg.flow.representation not in REPRESENTATIONS:
        raise InvalidInputError(f"flow.name must be one of {FLOWS} and flow.representation one "
                                f"of {REPRESENTATIONS}")  # fmt: skip
    d = cfg.data
    if not isinstance(d.val_pairs, int) or d.val_pairs < 1 or not (0 < d.val_fraction < 1):
        raise InvalidInputError("data.val_pairs must be >= 1 and data.val_fraction in (0, 1)")
    if d.max_frames is not None and (not isinstance(d.max_frames, int) or d.max_frames < 2):
        raise InvalidInputError(f"data.max_frames must be >= 2, got {d.max_frames!r}")
    check_trainer_config(cfg.trainer)
    if cfg.monitors:
        from moltune.common.config import from_dict
        from moltune.validation.monitors import MonitorConfig

        from_dict(MonitorConfig, dict(cfg.monitors), "monitors")


def data_folders(cfg: TrainConfig) -> tuple[list[str], str | None]:
    """(training folders, held-out folder) resolved against the data root."""
    from moltune.common.training import resolve_data

    dirs = [cfg.data.train_dir] if isinstance(cfg.data.train_dir, (str, Path)) else list(
        cfg.data.train_dir)
    train = [resolve_data(d, cfg.data.root) for d in dirs]
    test = resolve_data(cfg.data.test_dir, cfg.data.root) if cfg.data.test_dir else None
    return train, test


def check_data(train_data, test_data, pairs: list | None) -> list[tuple[int, int]]:
    """The temperature pairs to train, refusing data that cannot train them: fewer than two
    temperatures, pairs off the ladder, held-out data of another peptide or ladder."""
    from moltune.flow.lightning import neighbour_pairs

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


def _subsample(data, max_frames: int | None):
    if max_frames is None:
        return data
    for k in range(len(data.xyz_nm)):
        idx = np.linspace(0, len(data.xyz_nm[k]) - 1, min(max_frames, len(data.xyz_nm[k])))
        idx = idx.astype(int)
        data.xyz_nm[k] = data.xyz_nm[k][idx]
        data.energy_kjmol[k] = data.energy_kjmol[k][idx]
    return data


def _energy(topology, solvent: str):
    from moltune.physics.energy import TorchEnergy

    return TorchEnergy.from_topology(topology, solvent=solvent).double()


def _callbacks(cfg: TrainConfig, run) -> list:
    callbacks: list = []
    kwargs = {
        "dirpath": run.checkpoints, "filename": "step{step:06d}-acc{val/acceptance_flow:.4f}",
        "auto_insert_metric_name": False, "save_last": True, "save_top_k": cfg.top_k,
        "monitor": "val/acceptance_flow" if cfg.validate else None, "mode": "max",
        # save right after each validation, so a checkpoint's score is its own
        "save_on_train_epoch_end": not cfg.validate,
    }  # fmt: skip
    if not cfg.validate:
        kwargs.update(save_top_k=1, filename="step{step:06d}")
    from moltune.validation.monitors import GuardedModelCheckpoint, default_monitors

    callbacks += default_monitors(cfg.monitors or None, run.path)
    callbacks.append(GuardedModelCheckpoint(**kwargs))
    return callbacks


def train(cfg: TrainConfig, out: str | Path, resume: bool = False) -> Path:
    """Run training into ``out`` (a run folder); returns its path.

    Everything is checked (settings, run folder, data) before the folder is created.
    """
    import lightning as L

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
    from moltune.flow.checkpoint import flow_metadata
    from moltune.flow.lightning import TransportDataModule, TransportModule
    from moltune.flow.models import count_parameters

    check_config(cfg)
    last = check_run_folder(out, resume)
    train_dirs, test_dir = data_folders(cfg)
    train_data = _subsample(load_pt_runs(train_dirs, "training data"), cfg.data.max_frames)
    test_data = load_pt_runs(test_dir, "held-out data") if test_dir else None
    pairs = check_data(train_data, test_data, cfg.data.pairs)
    torch.set_num_threads(max(1, int(cfg.threads)))
    torch.set_flush_denormal(True)  # denormal floats make CPU kernels (layer norm, GELU) crawl
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = TransportDataModule(
        train_data, test_data, pairs, cfg.batch_size, cfg.data.val_pairs, cfg.data.val_fraction,
        cfg.seed,
    )  # fmt: skip
    if sum(len(p.x) for p in dm.train_sets) < cfg.batch_size:
        raise InvalidInputError(f"{sum(len(p.x) for p in dm.train_sets)} training pairs are "
                                f"fewer than one batch of {cfg.batch_size}")  # fmt: skip
    if cfg.data.reload_every_epoch:
        dm.reload = lambda: _subsample(load_pt_runs(train_dirs, "training data"),
                                       cfg.data.max_frames)  # fmt: skip
    flow = build_flow(cfg.flow, train_data.topology)
    if hasattr(flow, "representation"):
        frames = np.concatenate(
            [np.asarray(p.x) for p in dm.train_sets] + [np.asarray(dm.train_sets[-1].y)]
        )
        flow.representation.fit(frames)
    energy = _energy(train_data.topology, cfg.solvent)

    steps_per_epoch = max(1, sum(len(p.x) for p in dm.train_sets) // cfg.batch_size)
    total = cfg.steps or (cfg.epochs or 10**6) * steps_per_epoch
    meta = flow_metadata(cfg, train_data, dm.pairs)
    meta["n_parameters"] = count_parameters(flow)
    module = TransportModule(
        flow, energy, dm.reference_energies(), lr=cfg.lr, weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps, total_steps=total,
        grad_clip=cfg.grad_clip, cut_kT=cfg.energy_cut_kT, min_lr_fraction=cfg.min_lr_fraction,
        fast_lr_factor=cfg.fast_lr_factor,
        hparams={"moltune": meta},
    )  # fmt: skip
    run = open_run(out, cfg)
    previous = read_metrics(run.metrics) if resume and is_rank_zero() else None
    trainer = make_trainer(
        cfg.trainer, run, _callbacks(cfg, run),
        max_epochs=cfg.epochs if cfg.epochs is not None else (-1 if cfg.steps else 10**6),
        max_steps=cfg.steps if cfg.steps is not None else -1,
        max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
        val_check_interval=cfg.val_every_steps if cfg.validate else None,
        check_val_every_n_epoch=None if cfg.validate else 1,
        limit_val_batches=1.0 if cfg.validate else 0, deterministic=False,
        reload_dataloaders_every_n_epochs=1 if cfg.data.reload_every_epoch else 0,
        use_distributed_sampler=False,  # TransportDataModule shards the training items itself
    )  # fmt: skip
    log.info(
        "training %s/%s (%d parameters) on %s pairs %s; %d steps per epoch",
        cfg.flow.name, cfg.flow.representation, meta["n_parameters"],
        train_dirs, dm.pairs, steps_per_epoch,
    )  # fmt: skip
    t0 = time.time()
    start: dict[str, Any] = {}
    if last is None:
        module.step0 = identity_check(module, dm)
        if cfg.validate:  # step-0 figures of the map at initialisation (the identity)
            trainer.validate(module, datamodule=dm, verbose=False)
            start["identity_val_acceptance"] = _metric(trainer, "val/acceptance_flow")
        if cfg.moment_start and moment_start(flow, dm):
            start["moment_start"] = True
            if cfg.validate:
                trainer.validate(module, datamodule=dm, verbose=False)
                start["moment_start_val_acceptance"] = _metric(trainer, "val/acceptance_flow")
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last else None)
    elapsed = time.time() - t0
    if cfg.validate and trainer.global_step % cfg.val_every_steps != 0:
        trainer.validate(module, datamodule=dm, verbose=False)
    finish_logging(trainer, run, previous)
    if not trainer.is_global_zero:
        return run.path
    summary = {
        "steps": trainer.global_step, "epochs": trainer.current_epoch,
        "minutes": elapsed / 60, "skipped_steps": int(module.skipped_steps),
        "step0": module.step0, "start": start, "n_parameters": meta["n_parameters"],
        "world_size": trainer.world_size, "versions": package_versions(),
    }  # fmt: skip
    write_json(run.path / "train_summary.json", summary)
    plot_run(run.path)
    log.info(
        "run folder: %s (%s)", run.path, json.dumps({k: summary[k] for k in ("steps", "minutes")})
    )
    return run.path


def _metric(trainer, name: str) -> float | None:
    value = trainer.callback_metrics.get(name)
    return None if value is None else float(value)


@torch.no_grad()
def identity_check(module, dm) -> dict[str, float]:
    """Step-0 losses of the untrained flow on one training batch beside the identity's values.

    For the identity map the forward loss is b_t <U(x)>_s and the inverse loss b_s <U(y)>_t;
    a flow that starts as the identity must reproduce both (to float precision).
    """
    from moltune.physics.units import beta

    x, y, ts, tt = next(iter(dm.train_dataloader()))
    terms = module._terms(x, y, ts, tt)
    u_x, u_y = module.energy(x.double()), module.energy(y.double())
    out = {
        "loss_forward": float(terms.loss_forward.mean()),
        "loss_inverse": float(terms.loss_inverse.mean()),
        "identity_loss_forward": float((beta(tt.double()) * u_x).mean()),
        "identity_loss_inverse": float((beta(ts.double()) * u_y).mean()),
    }
    log.info("step-0 losses %s", json.dumps(out))
    return out


@torch.no_grad()
def moment_start(flow, dm) -> bool:
    """Initialise the per-coordinate layer from the first pair's per-coordinate moments."""
    import math

    from moltune.flow.models import PerCoordinateFlow

    layers = [m for m in flow.modules() if isinstance(m, PerCoordinateFlow)]
    if not layers or flow.representation.name != "internal":
        return False
    p = dm.train_sets[0]
    rep = flow.representation
    z_s = rep.encode(p.x.double())[0]
    z_t = rep.encode(p.y.double())[0]
    layers[0].fit_moments(z_s, z_t, math.log(p.t_target_K / p.t_source_K), rep)
    return True


def plot_run(run_path: str | Path) -> list[Path]:
    """PNG loss and acceptance curves from ``RUN/metrics.csv`` into ``RUN/plots``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    run_path = Path(run_path)
    csv = run_path / "metrics.csv"
    if not csv.exists():
        return []
    df = pd.read_csv(csv)
    plots = run_path / "plots"
    plots.mkdir(exist_ok=True)
    out = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss_forward", "loss_inverse")):
        for split, style in (("train", "-"), ("val", "o-")):
            col = f"{split}/{key}"
            if col in df:
                d = df[["step", col]].dropna()
                if split == "train" and len(d) > 20:
                    d = d.assign(**{col: d[col].rolling(20, min_periods=1).mean()})
                ax.plot(d["step"], d[col], style, label=split, ms=3)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{key} (kT units)")
        ax.legend()
    fig.tight_layout()
    path = plots / "losses.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    out.append(path)
    acc_cols = [c for c in df.columns if c.startswith("val/acceptance")]
    if acc_cols:
        fig, ax = plt.subplots(figsize=(6, 4))
        for col in acc_cols:
            d = df[["step", col]].dropna()
            ax.plot(d["step"], d[col], "o-", label=col.removeprefix("val/"), ms=3)
        ax.set_xlabel("step")
        ax.set_ylabel("swap acceptance (validation)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = plots / "acceptance.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out.append(path)
    return out
