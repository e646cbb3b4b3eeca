"""Train a temperature-transport flow on replica-exchange data (Lightning) into a run folder.

``train(cfg, out)`` resolves the data, builds the flow (fitting the representation's
standardisation on the training frames), and runs Lightning with a CSV logger
(``RUN/metrics.csv``), atomic top-k + last checkpoints (monitor ``val/acceptance_flow``), the
project's red-flag monitors (``moltune.validation.monitors``) and loss/acceptance plots.
``resume=True`` continues from ``RUN/checkpoints/last.ckpt``.

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

log = logging.getLogger(__name__)


@dataclass
class FlowConfig:
    """Which flow: ``baseline_ic`` or ``tarflow`` over ``internal`` or ``cartesian`` coordinates."""

    name: str = "tarflow"
    representation: str = "internal"
    n_blocks: int = 4
    d_model: int = 32
    n_layers: int = 1
    n_heads: int = 4
    mlp_ratio: int = 2
    scale_bound: float = 1.0
    atom_embeddings: bool = True
    per_coordinate: bool = True  # a per-coordinate (baseline-style) layer before the blocks
    spline_bins: int = 0  # > 0: RQ spline slot maps with this many bins (moltune.flow.splines)


@dataclass
class DataConfig:
    """Replica-exchange data (``moltune pt simulate`` folders) and which temperature pairs."""

    train_dir: str | list = "/work/data/aa_pt_train"  # one PT folder, or several of one system
    test_dir: str | None = "/work/data/aa_pt_test"  # held-out (independent) validation frames
    pairs: list | None = None  # [[i, j], ...] indices into the ladder; None = neighbours
    val_pairs: int = 2000  # validation pairs per temperature pair
    val_fraction: float = 0.1  # held-out tail when test_dir is None
    max_frames: int | None = None  # at most this many frames per temperature for training
    reload_every_epoch: bool = False  # re-read train_dir each epoch (PT run still growing)


@dataclass
class TrainConfig:
    """Everything a transport-flow run needs (defaults <- preset YAML <- CLI flags)."""

    flow: FlowConfig = field(default_factory=FlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    batch_size: int = 128
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
    accelerator: str = "cpu"
    solvent: str = "obc2"
    monitors: dict = field(default_factory=dict)  # moltune.validation.monitors.MonitorConfig


def build_flow(cfg: FlowConfig, topology) -> torch.nn.Module:
    """The configured flow (untrained; fit ``flow.representation`` before training)."""
    from moltune.flow.models import make_flow

    kwargs: dict[str, Any] = {"spline_bins": cfg.spline_bins}
    if cfg.name == "tarflow":
        kwargs = {
            "n_blocks": cfg.n_blocks, "d_model": cfg.d_model, "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads, "mlp_ratio": cfg.mlp_ratio, "scale_bound": cfg.scale_bound,
            "atom_embeddings": cfg.atom_embeddings, "per_coordinate": cfg.per_coordinate,
            "spline_bins": cfg.spline_bins,
        }  # fmt: skip
    return make_flow(cfg.name, topology, cfg.representation, **kwargs)


def load_pt_runs(directory: str | list | None, what: str):
    """PT data of one folder, or of several folders (same peptide and ladder) combined."""
    from moltune.physics.ptdata import combine_pt_data, load_pt_data

    if directory is None:
        return None
    dirs = [directory] if isinstance(directory, (str, Path)) else list(directory)
    for d in dirs:
        if not Path(d).exists():
            raise InputFileError(f"{what} folder not found: {d} (run `moltune pt simulate`)")
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
    """Run training into ``out`` (a run folder); returns its path."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from moltune.common.io import write_json
    from moltune.common.run import RunDir, package_versions
    from moltune.flow.checkpoint import AtomicCheckpointIO, flow_metadata
    from moltune.flow.lightning import TransportDataModule, TransportModule
    from moltune.flow.models import count_parameters

    torch.set_num_threads(max(1, int(cfg.threads)))
    torch.set_flush_denormal(True)  # denormal floats make CPU kernels (layer norm, GELU) crawl
    run = RunDir(Path(out))
    last = run.checkpoints / "last.ckpt"
    if resume and not last.exists():
        raise InputFileError(f"cannot resume: {last} does not exist")
    if not resume and last.exists():
        raise InvalidInputError(f"{run.path} already holds a run; pass --resume or a new --out")
    run.write_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    train_data = _subsample(load_pt_runs(cfg.data.train_dir, "training data"), cfg.data.max_frames)
    test_data = load_pt_runs(cfg.data.test_dir, "held-out data") if cfg.data.test_dir else None
    pairs = [tuple(p) for p in cfg.data.pairs] if cfg.data.pairs else None
    dm = TransportDataModule(
        train_data, test_data, pairs, cfg.batch_size, cfg.data.val_pairs, cfg.data.val_fraction,
        cfg.seed,
    )  # fmt: skip
    if cfg.data.reload_every_epoch:
        dm.reload = lambda: _subsample(
            load_pt_runs(cfg.data.train_dir, "training data"), cfg.data.max_frames
        )
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
    previous = _read_metrics(run.metrics) if resume else None  # CSVLogger truncates the file
    logger = CSVLogger(save_dir=str(run.path), name="", version="")
    trainer = L.Trainer(
        accelerator=cfg.accelerator, devices=1, logger=logger, callbacks=_callbacks(cfg, run),
        max_epochs=cfg.epochs if cfg.epochs is not None else (-1 if cfg.steps else 10**6),
        max_steps=cfg.steps if cfg.steps is not None else -1,
        max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
        val_check_interval=cfg.val_every_steps if cfg.validate else None,
        check_val_every_n_epoch=None if cfg.validate else 1,
        limit_val_batches=1.0 if cfg.validate else 0,
        num_sanity_val_steps=0, log_every_n_steps=1, enable_model_summary=False,
        plugins=[AtomicCheckpointIO()], deterministic=False, enable_progress_bar=True,
        reload_dataloaders_every_n_epochs=1 if cfg.data.reload_every_epoch else 0,
    )  # fmt: skip
    log.info(
        "training %s/%s (%d parameters) on %s pairs %s; %d steps per epoch",
        cfg.flow.name, cfg.flow.representation, meta["n_parameters"],
        cfg.data.train_dir, dm.pairs, steps_per_epoch,
    )  # fmt: skip
    t0 = time.time()
    start: dict[str, Any] = {}
    if not resume:
        module.step0 = identity_check(module, dm)
        if cfg.validate:  # step-0 figures of the map at initialisation (the identity)
            trainer.validate(module, datamodule=dm, verbose=False)
            start["identity_val_acceptance"] = _metric(trainer, "val/acceptance_flow")
        if cfg.moment_start and moment_start(flow, dm):
            start["moment_start"] = True
            if cfg.validate:
                trainer.validate(module, datamodule=dm, verbose=False)
                start["moment_start_val_acceptance"] = _metric(trainer, "val/acceptance_flow")
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)
    elapsed = time.time() - t0
    if cfg.validate and trainer.global_step % cfg.val_every_steps != 0:
        trainer.validate(module, datamodule=dm, verbose=False)
    logger.save()
    if previous is not None:
        _merge_metrics(run.metrics, previous)
    summary = {
        "steps": trainer.global_step, "epochs": trainer.current_epoch,
        "minutes": elapsed / 60, "skipped_steps": int(module.skipped_steps),
        "step0": module.step0, "start": start, "n_parameters": meta["n_parameters"],
        "versions": package_versions(),
    }  # fmt: skip
    write_json(run.path / "train_summary.json", summary)
    (run.path / "hparams.yaml").unlink(missing_ok=True)
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


def _read_metrics(path: Path):
    import pandas as pd

    return pd.read_csv(path) if path.exists() else None


def _merge_metrics(path: Path, previous) -> None:
    """Put the rows of the interrupted run back in front of the resumed run's rows."""
    import pandas as pd

    from moltune.common.io import atomic_path

    new = pd.read_csv(path) if path.exists() else previous.iloc[:0]
    first = new["step"].min() if len(new) else np.inf
    merged = pd.concat([previous[previous["step"] < first], new], ignore_index=True)
    with atomic_path(path) as tmp:
        merged.to_csv(tmp, index=False)


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
