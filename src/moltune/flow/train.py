"""Train a temperature-transport flow on the replica-exchange data of one or several peptides.

``train(cfg, out)`` is the one training path. Its peptides are a list: ``data.train_dir`` /
``data.test_dir`` is the list of one, ``data.peptides`` several sharing the flow core (each its
own coordinates and energy, ``moltune.flow.peptides``). It resolves and checks the data, builds
the flow (each representation standardised on its peptide's training frames), and runs Lightning
with a CSV logger (``RUN/metrics.csv``), atomic top-k + last checkpoints (monitor
``val/acceptance_flow``; the starting weights, step 0, compete), the project's red-flag monitors
(``moltune.validation.monitors``) and loss/acceptance plots. ``resume=True`` continues from
``RUN/checkpoints/last.ckpt`` with the batches, optimiser and schedule of the uninterrupted run;
``init`` starts the core from a trained run (fine-tuning). The run lifecycle (settings and
folder checked before anything is created, hardware from ``trainer``, loggers, metric rows kept
across a resume) is ``moltune.common.training``'s; ``batch_size`` is the global batch.

Checkpoints use the layout ``moltune.flow.checkpoint.load_flow`` reads: ``state_dict["flow.*"]``
(the first peptide's flow; with several peptides the shared core and that peptide's
representation), ``hyper_parameters["moltune"]`` (:func:`~moltune.flow.checkpoint.flow_metadata`)
and every peptide's representation under ``peptide_representations``.

Limits: ``epochs`` (passes over the training frames), ``steps`` (optimiser steps) and
``max_minutes`` (wall clock); whichever comes first ends the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from moltune.common.errors import InvalidInputError
from moltune.common.training import TrainerConfig
from moltune.flow.checkpoint import FlowConfig, build_flow
from moltune.flow.peptides import (
    TORSION_ORIGINS,
    PeptideSet,
    check_data,
    load_pt_runs,
    split_pairs,
    subsample,
)

__all__ = ["DataConfig", "FlowConfig", "TrainConfig", "build_flow", "check_config",
           "data_folders", "load_train_config", "train"]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Replica-exchange data (``moltune pt simulate`` folders) and which temperature pairs.

    One peptide: ``train_dir`` (one folder, or several of one system) and ``test_dir``. Several
    peptides: ``peptides`` maps a name to ``{train_dir: ..., test_dir: ...}`` (one ladder). Without
    a test folder the last ``val_fraction`` of each temperature's frames validates. Folders are
    named relative to the data root (``root``: ``--data-root``, else ``$MOLTUNE_DATA``, else
    ``./data``); ``simulate`` maps a folder name to the ``moltune pt simulate`` arguments that
    make it (named in the error when it is missing, run by ``--simulate-missing``).
    """

    train_dir: str | list | None = None  # one peptide's PT folder(s)
    test_dir: str | None = None  # its held-out (independent) validation frames
    peptides: dict = field(default_factory=dict)  # several: {NAME: {train_dir, test_dir}}
    pairs: list | None = None  # [[i, j], ...] indices into the ladder; None = neighbours
    val_pairs: int = 2000  # validation pairs per peptide and temperature pair
    val_fraction: float = 0.1  # held-out tail when there is no test folder
    max_frames: int | None = None  # at most this many frames per temperature for training
    reload_every_epoch: bool = False  # re-read the training folders after each pass
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
    steps: int | None = None  # 0 (with init): validate the starting core only
    max_minutes: float | None = 55.0
    val_every_steps: int = 200
    validate: bool = True
    top_k: int = 3  # 1: the best checkpoint is checkpoints/best.ckpt
    seed: int = 0
    threads: int = 1  # torch CPU threads (1 is fastest on a shared 2-core machine)
    solvent: str = "obc2"
    init: str | None = None  # trained run / checkpoint whose core starts this run
    torsion_origin: str = "fitted"  # or "zero" (moltune.flow.peptides.fit_representation)
    monitors: dict = field(default_factory=dict)  # moltune.validation.monitors.MonitorConfig


FLOWS = ("baseline_ic", "spline_ic", "tarflow")
REPRESENTATIONS = ("internal", "cartesian")

# the flat layout of ``pt train-transfer`` presets and run folders of earlier versions, and the
# defaults that layout had where TrainConfig's differ
FLAT_DATA_KEYS = {"peptides": "peptides", "pairs": "pairs", "val_pairs": "val_pairs",
                  "val_fraction": "val_fraction", "data_root": "root", "simulate": "simulate"}  # fmt: skip
FLAT_DEFAULTS: dict[str, Any] = {
    "flow": {"n_blocks": 2, "per_coordinate": False}, "data": {"val_pairs": 200},
    "steps": 2000, "max_minutes": 30.0, "val_every_steps": 100, "torsion_origin": "zero",
    "top_k": 1,
}  # fmt: skip


def nested_layout(raw: dict) -> dict:
    """A preset in the flat multi-peptide layout (``peptides``, ``pairs``, ``val_pairs``,
    ``val_fraction``, ``data_root``, ``simulate`` at top level) in TrainConfig's layout, with that
    layout's defaults where it is silent; any other preset as it is."""
    if "peptides" not in raw:
        return raw
    out = {k: v for k, v in raw.items() if k not in FLAT_DATA_KEYS}
    flat = {FLAT_DATA_KEYS[k]: v for k, v in raw.items() if k in FLAT_DATA_KEYS}
    for key, default in FLAT_DEFAULTS.items():
        if isinstance(default, dict):
            out[key] = default | (out.get(key) or {}) | (flat if key == "data" else {})
        else:
            out.setdefault(key, default)
    return out


def load_train_config(preset: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """TrainConfig defaults <- preset (either layout, :func:`nested_layout`) <- overrides."""
    from moltune.common.config import load_yaml, merge, preset_path

    cfg = TrainConfig()
    if preset is not None:
        cfg = merge(cfg, nested_layout(load_yaml(preset_path(preset))))
    return merge(cfg, overrides)


def _peptide_spec(name: str, spec) -> dict:
    spec = {"train_dir": spec} if isinstance(spec, (str, list)) else dict(spec or {})
    unknown = set(spec) - {"train_dir", "test_dir"}
    if unknown or not spec.get("train_dir"):
        raise InvalidInputError(f"peptide {name}: expected train_dir (and test_dir), got "
                                f"{sorted(spec)}")  # fmt: skip
    return spec


def check_config(cfg: TrainConfig) -> None:
    """Refuse a setting that cannot train (before anything is created)."""
    from moltune.common.training import check_positive, check_trainer_config

    for name in ("steps", "epochs"):
        v = getattr(cfg, name)
        least = 0 if name == "steps" and cfg.init else 1
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < least):
            raise InvalidInputError(f"{name} must be an integer >= {least}, got {v!r}")
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
    if cfg.torsion_origin not in TORSION_ORIGINS:
        raise InvalidInputError(f"torsion_origin must be one of {TORSION_ORIGINS}, "
                                f"got {cfg.torsion_origin!r}")  # fmt: skip
    d = cfg.data
    if not isinstance(d.peptides, dict):
        raise InvalidInputError("data.peptides must map names to {train_dir: DIR, test_dir: DIR}")
    if (d.train_dir is None) == (not d.peptides):
        raise InvalidInputError("give the training data as data.train_dir (--data: one peptide) "
                                "or as data.peptides (several), exactly one of them")  # fmt: skip
    if d.peptides and d.test_dir is not None:
        raise InvalidInputError("with data.peptides each peptide names its own test_dir")
    for name, spec in d.peptides.items():
        _peptide_spec(name, spec)
    if len(d.peptides) > 1 and not cfg.init and (
            cfg.flow.name != "tarflow" or cfg.flow.per_coordinate):  # fmt: skip
        raise InvalidInputError("several peptides need flow.name tarflow with per_coordinate: "
                                "false (that layer is peptide-specific)")  # fmt: skip
    if not isinstance(d.val_pairs, int) or d.val_pairs < 1 or not (0 < d.val_fraction < 1):
        raise InvalidInputError("data.val_pairs must be >= 1 and data.val_fraction in (0, 1)")
    if d.max_frames is not None and (not isinstance(d.max_frames, int) or d.max_frames < 2):
        raise InvalidInputError(f"data.max_frames must be >= 2, got {d.max_frames!r}")
    check_trainer_config(cfg.trainer)
    if cfg.monitors:
        from moltune.common.config import from_dict
        from moltune.validation.monitors import MonitorConfig

        from_dict(MonitorConfig, dict(cfg.monitors), "monitors")


def peptide_specs(cfg: TrainConfig) -> list[tuple[str | None, list[str], str | None]]:
    """(name, training folders, held-out folder) of each peptide, resolved against the data
    root; ``data.train_dir`` is the list of one (named from its data when loaded)."""
    from moltune.common.training import resolve_data

    d = cfg.data
    items = ([(None, {"train_dir": d.train_dir, "test_dir": d.test_dir})] if not d.peptides
             else [(n, _peptide_spec(n, s)) for n, s in d.peptides.items()])  # fmt: skip
    out = []
    for name, spec in items:
        t = spec["train_dir"]
        dirs = [t] if isinstance(t, (str, Path)) else list(t)
        test = resolve_data(spec["test_dir"], d.root) if spec.get("test_dir") else None
        out.append((name, [resolve_data(x, d.root) for x in dirs], test))
    return out


def data_folders(cfg: TrainConfig) -> list[str]:
    """Every PT data folder the run reads (training first, then held-out, peptide by peptide)."""
    return [f for _, train, test in peptide_specs(cfg) for f in train + ([test] if test else [])]


def load_peptides(cfg: TrainConfig) -> list[PeptideSet]:
    """Each peptide's data, pairs and split (no flow yet), refusing data that cannot train."""
    from moltune.flow.lightning import TrainPairs

    specs = peptide_specs(cfg)
    sets: list[PeptideSet] = []
    for name, train_dirs, test_dir in specs:
        label = f"peptide {name}: " if len(specs) > 1 else ""
        load = lambda dirs=train_dirs, name=name: subsample(
            load_pt_runs(dirs, f"{name or ''} training data".strip()), cfg.data.max_frames)
        data = load()
        test = load_pt_runs(test_dir, "held-out data") if test_dir else None
        try:
            pairs = check_data(data, test, cfg.data.pairs)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{label}{exc}") from exc
        temps = [float(t) for t in data.temperatures_K]
        if sets and temps != [float(t) for t in sets[0].data.temperatures_K]:
            raise InvalidInputError(f"{label}the ladder {temps} K is not "
                                    f"{list(sets[0].data.temperatures_K)} K")  # fmt: skip
        train_sets, val_sets = split_pairs(data, test, pairs, cfg.data.val_fraction)
        n = len(TrainPairs(train_sets))
        if n < cfg.batch_size:
            raise InvalidInputError(f"{label}{n} training pairs are fewer than one batch of "
                                    f"{cfg.batch_size}")  # fmt: skip
        reload = None
        if cfg.data.reload_every_epoch:
            reload = lambda load=load, test=test, pairs=pairs: split_pairs(
                load(), test, pairs, cfg.data.val_fraction)[0]
        sequence = (data.metadata.get("peptide") or {}).get("sequence") or "peptide"
        sets.append(PeptideSet(name or sequence, data, pairs, train_sets, val_sets,
                               reload=reload))  # fmt: skip
    return sets


def build_flows(cfg: TrainConfig, sets: list[PeptideSet], core: dict | None = None):
    """The first peptide's flow from the config (its core from ``core`` weights if given), every
    other peptide's a view of that core with its own representation; each representation
    standardised on its peptide's training frames; energies and reference energies set."""
    from moltune.flow.coordinates import make_representation
    from moltune.flow.models import TransportFlow
    from moltune.flow.peptides import fit_representation, reference_energies
    from moltune.physics.energy import TorchEnergy

    flow = build_flow(cfg.flow, sets[0].data.topology)
    if core is not None:
        flow.core.load_state_dict(core)
    for k, ps in enumerate(sets):
        ps.flow = flow if k == 0 else TransportFlow(
            make_representation(cfg.flow.representation, ps.data.topology), flow.core)
        if hasattr(ps.flow, "representation"):
            fit_representation(ps.flow.representation, ps.training_frames(), cfg.torsion_origin)
        ps.energy = TorchEnergy.from_topology(ps.data.topology, solvent=cfg.solvent).double()
        ps.u_ref = reference_energies(ps.train_sets)
    return flow


def _init_core(cfg: TrainConfig) -> tuple[TrainConfig, dict | None]:
    """The config with the ``init`` run's flow settings and torsion origin, and its core
    weights (read by the one reader, ``moltune.flow.checkpoint.load_flow``)."""
    if not cfg.init:
        return cfg, None
    from moltune.common.config import from_dict
    from moltune.flow.checkpoint import load_flow

    flow, info = load_flow(cfg.init)
    if info["flow_config"].get("per_coordinate"):
        raise InvalidInputError(f"{info['path']}: a per-coordinate flow is peptide-specific; "
                                "cannot start a run from its core")  # fmt: skip
    core = {k: v.detach().clone() for k, v in flow.core.state_dict().items()}
    cfg = dataclasses.replace(cfg, flow=from_dict(FlowConfig, info["flow_config"], "flow"),
                              torsion_origin=info.get("torsion_origin", "fitted"))  # fmt: skip
    return cfg, core


class StopAtStep(Callback):
    """Stop (and so validate and checkpoint) after the last step even between validations."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


def _callbacks(cfg: TrainConfig, run, last_step: int | None) -> list:
    """Red-flag monitors, top-k and last checkpoints, the stop after the last step."""
    from moltune.validation.monitors import GuardedModelCheckpoint, default_monitors

    kwargs = {
        "dirpath": run.checkpoints, "auto_insert_metric_name": False, "save_last": True,
        "filename": "best" if cfg.top_k == 1 else "step{step:06d}-acc{val/acceptance_flow:.4f}",
        "save_top_k": cfg.top_k, "monitor": "val/acceptance_flow", "mode": "max",
        # save right after each validation, so a checkpoint's score is its own
        "save_on_train_epoch_end": False, "enable_version_counter": False,
    }  # fmt: skip
    if not cfg.validate:
        kwargs.update(save_top_k=1, filename="step{step:06d}", monitor=None,
                      save_on_train_epoch_end=True)  # fmt: skip
    callbacks = default_monitors(cfg.monitors or None, run.path)
    callbacks.append(GuardedModelCheckpoint(**kwargs))
    return callbacks + ([StopAtStep(last_step)] if last_step is not None else [])


def _save_start(trainer, ckpt_cb, score: float) -> None:
    """Step-0 checkpoints (best and last) of the starting weights, made known to the checkpoint
    callback so that training replaces them only when it beats them (fine-tuning)."""
    best = ckpt_cb.format_checkpoint_name({"step": 0, "val/acceptance_flow": score})
    trainer.save_checkpoint(best, weights_only=False)
    value = torch.tensor(score)
    ckpt_cb.best_k_models = {best: value}
    ckpt_cb.kth_best_model_path, ckpt_cb.kth_value = best, value
    ckpt_cb.best_model_path, ckpt_cb.best_model_score = best, value
    ckpt_cb.last_model_path = ckpt_cb.format_checkpoint_name({}, filename="last")
    trainer.save_checkpoint(ckpt_cb.last_model_path, weights_only=False)


def _check_resumable(last: Path, names: list[str]) -> None:
    meta = torch.load(last, map_location="cpu", weights_only=True).get("hyper_parameters") or {}
    saved = (meta.get("moltune") or {}).get("peptides")
    if saved is not None and saved != names:
        raise InvalidInputError(f"cannot resume {last.parent.parent} with peptides {names}: "
                                f"it trains {saved}")  # fmt: skip


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Run training into ``out`` (a run folder); returns its path (``RUN/train_summary.json``
    holds the summary). Everything is checked (settings, run folder, data) before the folder is
    created."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from moltune.common.training import (
        check_run_folder,
        finish_logging,
        is_rank_zero,
        make_trainer,
        open_run,
        read_metrics,
    )  # fmt: skip
    from moltune.flow.checkpoint import flow_metadata
    from moltune.flow.models import count_parameters
    from moltune.flow.peptides import PeptideTransportModule, TransportDataModule

    check_config(cfg)
    last = check_run_folder(out, resume)
    cfg, core = _init_core(cfg)
    sets = load_peptides(cfg)
    names = [s.name for s in sets]
    if last is not None:
        _check_resumable(last, names)
    torch.set_num_threads(max(1, int(cfg.threads)))
    torch.set_flush_denormal(True)  # denormal floats make CPU kernels (layer norm, GELU) crawl
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    flow = build_flows(cfg, sets, core)
    dm = TransportDataModule(sets, cfg.batch_size, cfg.data.val_pairs, cfg.seed)
    steps_per_epoch = dm.epoch_batches
    total = cfg.steps if cfg.steps is not None else (cfg.epochs or 10**6) * steps_per_epoch
    meta = flow_metadata(cfg, sets[0].data, sets[0].pairs, names)
    meta["n_parameters"] = count_parameters(flow)
    module = PeptideTransportModule(
        sets, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
        total_steps=total, grad_clip=cfg.grad_clip, cut_kT=cfg.energy_cut_kT,
        min_lr_fraction=cfg.min_lr_fraction, fast_lr_factor=cfg.fast_lr_factor,
        hparams={"moltune": meta},
    )  # fmt: skip
    run = open_run(out, cfg)
    previous = read_metrics(run.metrics) if last is not None and is_rank_zero() else None
    limited = cfg.steps is not None or cfg.epochs is not None
    callbacks = _callbacks(cfg, run, total if limited else None)
    ckpt_cb = next(c for c in callbacks if isinstance(c, ModelCheckpoint))
    trainer = make_trainer(
        cfg.trainer, run, callbacks, progress=progress, flush_every=cfg.val_every_steps,
        max_epochs=cfg.epochs if cfg.epochs is not None else (-1 if cfg.steps is not None
                                                              else 10**6),
        max_steps=cfg.steps if cfg.steps is not None else -1,
        max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
        val_check_interval=cfg.val_every_steps if cfg.validate else None,
        check_val_every_n_epoch=None if cfg.validate else 1,
        limit_val_batches=1.0 if cfg.validate else 0, deterministic=False,
        use_distributed_sampler=False,  # TrainBatches gives each rank its share
    )  # fmt: skip
    log.info("training %s/%s (%d parameters) on %s pairs %s; %d steps per epoch", cfg.flow.name,
             cfg.flow.representation, meta["n_parameters"], names, sets[0].pairs,
             steps_per_epoch)  # fmt: skip
    t0 = time.time()
    moment = False
    with warnings.catch_warnings():
        # (the batches resume at the checkpoint's batch; the step-0 checkpoints are in the
        # checkpoint folder by design)
        warnings.filterwarnings("ignore", ".*(does not have many workers|exists and is not empty"
                                "|dataloader is not resumable)")  # fmt: skip
        if last is None:  # step 0: the starting weights (identity, moment start, --init core)
            identity_check(module, dm)
            if cfg.validate:
                trainer.validate(module, datamodule=dm, verbose=False)
            moment = cfg.moment_start and moment_start(flow, dm)
            if moment and cfg.validate:
                trainer.validate(module, datamodule=dm, verbose=False)
            if cfg.validate:
                _save_start(trainer, ckpt_cb, float(trainer.callback_metrics["val/acceptance_flow"]))
        if total > 0:
            trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last else None,
                        weights_only=True)  # fmt: skip
    minutes = (time.time() - t0) / 60.0
    finish_logging(trainer, run, previous)
    if trainer.is_global_zero:
        _write_summary(run, trainer, module, ckpt_cb, cfg, {
            "minutes": minutes, "moment_start": moment, "n_parameters": meta["n_parameters"],
            "peptides": names, "init": cfg.init, "resumed": resume})  # fmt: skip
    return run.path


def _write_summary(run, trainer, module, ckpt_cb, cfg: TrainConfig, extra: dict) -> dict:
    """``RUN/train_summary.json`` (``start``/``last``: the first and last validation rows) and
    the plots."""
    import pandas as pd

    from moltune.common.io import write_json
    from moltune.common.run import package_versions

    rows = pd.read_csv(run.metrics) if run.metrics.is_file() else pd.DataFrame()
    if "val/acceptance_flow" in rows:
        rows = rows.dropna(subset=["val/acceptance_flow"])
    else:
        rows = rows.iloc[:0]
    val = lambda r: {k: float(v) for k, v in r.items() if k.startswith("val/") and pd.notna(v)}
    best = ckpt_cb.best_model_score
    summary = {
        "steps": int(trainer.global_step), "epochs": int(trainer.current_epoch),
        "skipped_steps": int(module.skipped_steps), "step0": module.step0,
        "start": val(rows.iloc[0]) if len(rows) else {},
        "last": val(rows.iloc[-1]) if len(rows) else {},
        "best_val_acceptance_flow": None if best is None else float(best),
        "best_checkpoint": str(ckpt_cb.best_model_path) or None,
        "world_size": trainer.world_size, **extra, "versions": package_versions(),
    }  # fmt: skip
    write_json(run.path / "train_summary.json", summary)
    plot_run(run.path)
    log.info("run folder: %s (%s)", run.path,
             json.dumps({k: summary[k] for k in ("steps", "minutes", "best_val_acceptance_flow")}))
    return summary


@torch.no_grad()
def identity_check(module, dm) -> dict[str, float]:
    """Step-0 losses of the starting flow on the first training batch beside the identity's.

    For the identity map the forward loss is b_t <U(x)>_s and the inverse loss b_s <U(y)>_t;
    a flow that starts as the identity must reproduce both (to float precision).
    """
    x, y, ts, tt, key = next(iter(dm.train_dataloader()))
    module._record_step0(module._terms(x, y, ts, tt, key), x, y, ts, tt, key)
    log.info("step-0 losses %s", json.dumps(module.step0))
    return module.step0


@torch.no_grad()
def moment_start(flow, dm) -> bool:
    """Initialise the per-coordinate layer from the first pair's per-coordinate moments."""
    import math

    from moltune.flow.models import PerCoordinateFlow

    layers = [m for m in flow.modules() if isinstance(m, PerCoordinateFlow)]
    if not layers or flow.representation.name != "internal":
        return False
    p = dm.sets[0].train_sets[0]
    rep = flow.representation
    z_s = rep.encode(p.x.double())[0]
    z_t = rep.encode(p.y.double())[0]
    layers[0].fit_moments(z_s, z_t, math.log(p.t_target_K / p.t_source_K), rep)
    return True


def plot_run(run_path: str | Path) -> list[Path]:
    """PNG curves from ``RUN/metrics.csv`` into ``RUN/plots``: ``losses.png`` (training, a
    rolling mean of 20 batches, per peptide when there are several, and validation) and
    ``acceptance.png`` (validation swap acceptance through the flow, solid, and naive, dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import yaml

    from moltune.common.io import atomic_path

    run_path = Path(run_path)
    csv = run_path / "metrics.csv"
    if not csv.exists():
        return []
    df = pd.read_csv(csv)
    config = run_path / "config.yaml"
    names = list(((yaml.safe_load(config.read_text()) or {}).get("data") or {}).get("peptides")
                 or []) if config.exists() else []  # fmt: skip
    plots = run_path / "plots"
    plots.mkdir(exist_ok=True)
    out = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        with atomic_path(plots / name) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        out.append(plots / name)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss_forward", "loss_inverse")):
        col = f"train/{key}"
        if col in df:
            by = ["train/peptide"] if "train/peptide" in df else []
            d = df[["step", col, *by]].dropna()
            for k, g in d.groupby(by[0]) if by else [(None, d)]:
                label = "train" if k is None else f"train {names[int(k)] if int(k) < len(names) else int(k)}"
                ax.plot(g["step"], g[col].rolling(20, min_periods=1).mean(), "-", label=label)
        if f"val/{key}" in df:
            d = df[["step", f"val/{key}"]].dropna()
            ax.plot(d["step"], d[f"val/{key}"], "ko-", label="val", ms=3)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{key} (kT units)")
        if ax.lines:
            ax.legend(fontsize=7)
    save(fig, "losses.png")
    flows = [c for c in df.columns if c.startswith("val/acceptance_flow")]
    if flows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for col in flows:
            d = df[["step", col]].dropna()
            tag = col.removeprefix("val/acceptance_flow").strip("_") or "all pairs"
            line = ax.plot(d["step"], d[col], "o-", label=tag, ms=3)
            naive = col.replace("acceptance_flow", "acceptance_naive")
            if naive in df:
                d = df[["step", naive]].dropna()
                ax.plot(d["step"], d[naive], "--", color=line[0].get_color(), lw=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel("validation swap acceptance (dashed: naive)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6, ncol=2)
        save(fig, "acceptance.png")
    return out
