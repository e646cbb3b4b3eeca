"""A stand-in for the published DiffSBDD checkpoint, trained here from scratch.

The released ``crossdocked_fullatom_cond.ckpt`` cannot be downloaded on these machines, and the
random-weight fixture generates noise, so the fine-tuning protocol needs a model that generates
molecules. This module trains a model with the published layout (the fixture's hyper-parameters:
joint_nf 32, hidden_nf 128, 5 layers, 10 element types, T = 500; the same state-dict keys and
shapes) on a handful of complexes until it memorises them, and writes a DiffSBDD-layout
checkpoint that :func:`moltune.sbdd.checkpoint.load_checkpoint` reads.

It memorises its training complexes; that is the point (a model that makes molecules for these
pockets) and its limit (it says nothing about generalisation). Every report that uses it must
name it. Departures from the published hyper-parameters, for this CPU, are config fields
(``egnn_overrides``): by default the pocket-pocket edge cutoff is lowered so that pocket atoms
only see themselves and the ligand, which makes a training step about ten times cheaper.

Whether it has memorised is measured, not assumed: :func:`x0_error` gives the one-call denoising
error (Å per atom) at chosen diffusion steps (logged to ``x0_error.csv`` every ``x0_every`` steps;
``select: x0`` keeps the best), and the final evaluation generates molecules for the training
pockets at the checkpoint's full number of steps.

One command (repository root): ``moltune sbdd standin --preset sbdd_standin --out DIR``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moltune.common.errors import InvalidInputError
from moltune.common.io import sha256_file
from moltune.common.training import TrainerConfig

log = logging.getLogger(__name__)

#: Hyper-parameters of the released checkpoint (as in the shared random-weight fixture).
PUBLISHED_HPARAMS: dict[str, Any] = {
    "outdir": "", "dataset": "crossdock", "datadir": "", "batch_size": 16, "lr": 0.001,
    "egnn_params": {
        "device": "cpu", "edge_cutoff_ligand": None, "edge_cutoff_pocket": 5.0,
        "edge_cutoff_interaction": 5.0, "reflection_equivariant": False, "joint_nf": 32,
        "hidden_nf": 128, "n_layers": 5, "attention": True, "tanh": True, "norm_constant": 1,
        "inv_sublayers": 1, "sin_embedding": False, "aggregation_method": "sum",
        "normalization_factor": 100,
    },
    "diffusion_params": {
        "diffusion_steps": 500, "diffusion_noise_schedule": "polynomial_2",
        "diffusion_noise_precision": 0.0005, "diffusion_loss_type": "l2",
        "normalize_factors": [1, 4],
    },
    "num_workers": 0, "augment_noise": 0, "augment_rotation": False, "clip_grad": True,
    "eval_epochs": 50,
    "eval_params": {"n_eval_samples": 100, "eval_batch_size": 100, "smiles_file": None,
                    "n_visualize_samples": 5, "keep_frames": 100},
    "visualize_sample_epoch": 50, "visualize_chain_epoch": 50, "auxiliary_loss": False,
    "loss_params": {"max_weight": 0.001, "schedule": "linear", "clamp_lj": 3.0},
    "mode": "pocket_conditioning", "pocket_representation": "full-atom", "virtual_nodes": False,
}

#: Size of the published node histogram (ligand size 0..106 x pocket size 0..1670).
HISTOGRAM_SHAPE = (107, 1671)


@dataclass
class StandinConfig:
    """Stand-in training (defaults: the ``sbdd_standin`` preset's choices)."""

    data: str = "complexes"  # raw complexes, or a processed folder (train.npz), under data_root
    data_root: str | None = None  # default $MOLTUNE_DATA, else ./data
    out: str = "runs/sbdd/standin"
    splits: list[str] = field(default_factory=lambda: ["train", "val"])  # complexes to memorise
    complexes: list[str] = field(default_factory=list)  # restrict to these ids (empty: all)
    embedding: str = "deterministic"  # provider used when processing raw complexes
    egnn_overrides: dict[str, Any] = field(default_factory=lambda: {"edge_cutoff_pocket": 0.5})
    # normalize_factors [x, h]: the network sees x / factor; edge cutoffs apply in those units
    diffusion_overrides: dict[str, Any] = field(default_factory=dict)
    init: str = "scratch"  # scratch (the model's own init) | a DiffSBDD checkpoint path
    seed: int = 0
    steps: int = 2000
    batch_size: int = 4
    lr: float = 1.0e-3
    weight_decay: float = 1.0e-12
    warmup_steps: int = 50
    lr_schedule: str = "cosine"  # cosine (decay to min_lr_fraction * lr) | constant
    min_lr_fraction: float = 0.1  # cosine decay to this fraction of lr at the last step
    grad_clip: float = 2.0
    t_power: float = 1.0  # t_int = round(T * u**t_power); > 1 favours small noise levels
    # Sampling fixes the ligand centre of mass at the pocket's (DiffSBDD); training a memorising
    # model on crystal poses (offset 0.6-3 Å) mismatches that, so optionally translate each
    # ligand rigidly onto its pocket's centre of mass (internal geometry unchanged).
    ligand_at_pocket_com: bool = False
    ema_decay: float = 0.0  # EMA of weights (DiffSBDD: 0.999); standin.ckpt holds the EMA
    # Every x0_every steps, measure the one-call denoising error (Å, see x0_error) of the
    # weights that would be saved (EMA if any) at x0_t; with select "x0" standin.ckpt is the
    # checkpoint with the lowest mean error, else the final weights.
    x0_every: int = 0
    x0_t: list[int] = field(default_factory=lambda: [20, 50, 100, 200])
    select: str = "last"  # last | x0
    save_every: int = 100
    eval_n_samples: int = 4
    eval_timesteps: int = 100
    eval_complexes: int = 0  # how many training complexes to evaluate at the end (0: all)
    threads: int = 0  # torch threads (0: leave as is)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def standin_hparams(overrides: dict[str, Any] | None = None,
                    histogram: np.ndarray | None = None,
                    diffusion_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Published hyper-parameters with ``egnn_params`` / ``diffusion_params`` overrides (none
    of which changes a state-dict key or shape) and a node histogram."""
    hp = copy.deepcopy(PUBLISHED_HPARAMS)
    for k, v in (overrides or {}).items():
        if k not in hp["egnn_params"]:
            raise InvalidInputError(f"unknown egnn_params key {k!r}")
        hp["egnn_params"][k] = v
    for k, v in (diffusion_overrides or {}).items():
        if k not in ("normalize_factors",):  # steps / schedule would change the gamma buffer
            raise InvalidInputError(f"diffusion_params key {k!r} cannot be overridden")
        hp["diffusion_params"][k] = v
    if histogram is not None:
        hp["node_histogram"] = histogram.tolist()
    return hp


def size_histogram(items: list[dict[str, Any]], shape=HISTOGRAM_SHAPE) -> np.ndarray:
    """Joint (ligand atoms, pocket atoms) histogram of ``items`` in the published shape,
    Gaussian-smoothed (sigma 1 bin) as DiffSBDD's preprocessing does."""
    from scipy.ndimage import gaussian_filter

    hist = np.zeros(shape)
    for d in items:
        a, b = len(d["lig_coords"]), len(d["pocket_coords"])
        if a < shape[0] and b < shape[1]:
            hist[a, b] += 1
    return gaussian_filter(hist, sigma=1.0, mode="constant", cval=0.0, truncate=4.0)


def processed_dir(data: str | Path, out: Path, embedding: str) -> Path:
    """``data`` if it is already processed, else process it into ``out/data``."""
    data = Path(data)
    if (data / "train.npz").is_file():
        return data
    from moltune.sbdd.data import process_complexes

    target = out / "data"
    if not (target / "train.npz").is_file():
        process_complexes(data, target, embedding=embedding)
    return target


def load_items(pdir: Path, splits: list[str], complexes: list[str]) -> list[dict[str, Any]]:
    from moltune.sbdd.data import load_processed_split

    items = []
    for s in splits:
        if (pdir / f"{s}.npz").is_file():
            items.extend(load_processed_split(pdir, s))
    if complexes:
        wanted = set(complexes)
        items = [d for d in items if d["name"] in wanted]
        missing = wanted - {d["name"] for d in items}
        if missing:
            raise InvalidInputError(f"complexes {sorted(missing)} not in splits {splits} of {pdir}")
    if not items:
        raise InvalidInputError(f"no complexes to train on in {pdir} (splits {splits})")
    return items


def centre_ligand_on_pocket(d: dict[str, Any]) -> dict[str, Any]:
    """Copy of a complex with the ligand translated (Å) so its centre of mass is the pocket's."""
    lig = np.asarray(d["lig_coords"], dtype=np.float64)
    shift = np.asarray(d["pocket_coords"], dtype=np.float64).mean(0) - lig.mean(0)
    return {**d, "lig_coords": (lig + shift).astype(np.asarray(d["lig_coords"]).dtype)}


def lr_at(step: int, cfg: StandinConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_fraction * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    p = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    f = cfg.min_lr_fraction + (1 - cfg.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * min(1, p)))
    return cfg.lr * f


def build_model(cfg: StandinConfig, items: list[dict[str, Any]]):
    from moltune.sbdd.checkpoint import load_checkpoint
    from moltune.sbdd.model import LigandDiffusionModel

    hp = standin_hparams(cfg.egnn_overrides, size_histogram(items), cfg.diffusion_overrides)
    torch.manual_seed(cfg.seed)
    model = LigandDiffusionModel(hp)
    if cfg.init != "scratch":
        ck = load_checkpoint(cfg.init)
        model.load_diffsbdd_state_dict(ck.state_dict, where=cfg.init)
    return model


def _save(model, path: Path, step: int, cfg: StandinConfig, extra: dict[str, Any]) -> Path:
    from moltune.sbdd.checkpoint import save_checkpoint

    hp = dict(model.hyper_parameters)
    hp["standin"] = {"steps_done": step, "config": dataclasses.asdict(cfg), **extra}
    return save_checkpoint(path, model.diffsbdd_state_dict(), hp, global_step=step)


class StandinBatches(torch.utils.data.Dataset):
    """Batch k: ``batch_size`` complexes (repeated when fewer) and their diffusion steps, drawn
    from (seed, k) alone, so a resumed run and any number of DDP ranks draw the same global
    batches (rank r of W takes its items r, r + W, ...)."""

    def __init__(self, items: list[dict[str, Any]], cfg: StandinConfig, T: int, length: int):
        self.items, self.cfg, self.T, self.length = items, cfg, T, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int):
        from moltune.common.training import world
        from moltune.sbdd.evaluation import complex_batch

        rng = np.random.default_rng([self.cfg.seed, k])
        n = self.cfg.batch_size
        idx = rng.choice(len(self.items), size=n, replace=len(self.items) < n)
        u = torch.as_tensor(rng.random(n))
        t_int = torch.round(self.T * u ** self.cfg.t_power).long().clamp(0, self.T)
        rank, size = world()
        mine = list(range(rank, n, size))
        return complex_batch([self.items[i] for i in idx[mine]]), t_int[mine]


class _Batches(torch.utils.data.Sampler):
    """Global batch numbers from the batches done so far to the last step (one epoch)."""

    def __init__(self, start, steps: int):
        self.start, self.steps = start, steps

    def __len__(self) -> int:
        return max(0, self.steps - self.start())

    def __iter__(self):
        return iter(range(self.start(), self.steps))


import lightning.pytorch as pl


class StandinModule(pl.LightningModule):
    """The stand-in's training step in Lightning: AdamW (amsgrad), warm-up + cosine (or
    constant) schedule, clipping, non-finite steps skipped, an optional EMA of the weights (a
    submodule, so it is checkpointed and resumed), the x0 error and best-by-x0 checkpoint."""

    def __init__(self, model, cfg: StandinConfig, items: list[dict[str, Any]], run):
        super().__init__()
        self.automatic_optimization = False
        self.model, self.cfg, self.items, self.run = model, cfg, items, run
        self.ema = None
        if cfg.ema_decay > 0:
            self.ema = copy.deepcopy(model).eval()
            for p in self.ema.parameters():
                p.requires_grad_(False)
        self.best: dict[str, Any] = {"score": math.inf}
        self.x0_rows: list[str] = []

    def saved_model(self):
        """The weights a checkpoint of the stand-in holds (the EMA if any)."""
        return self.ema if self.ema is not None else self.model

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr,
                                weight_decay=self.cfg.weight_decay, amsgrad=True)  # fmt: skip
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, self.cfg) / self.cfg.lr)
        return [opt], [{"scheduler": sched, "interval": "step"}]

    def training_step(self, batch, batch_idx):
        data, t_int = batch
        opt, sched = self.optimizers(), self.lr_schedulers()
        lr = float(sched.get_last_lr()[0])
        out = self.model(data, t_int=t_int)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(out.loss)
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if bool(torch.isfinite(out.loss.detach())) and bool(torch.isfinite(gn)):
            opt.step()
            if self.ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(list(self.ema.parameters()),
                                         list(self.model.parameters()), 1.0 - self.cfg.ema_decay)
        sched.step()
        kw = {"on_step": True, "on_epoch": False, "sync_dist": True}
        self.log("train/loss", out.loss.detach(), prog_bar=True, **kw)
        self.log("train/grad_norm", gn.detach().float(), **kw)
        self.log("lr", lr, **kw)
        return out.loss.detach()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        from moltune.common.io import write_json, write_text

        step, cfg = int(self.global_step), self.cfg
        if not cfg.x0_every or not (step % cfg.x0_every == 0 or step == cfg.steps):
            return
        if not self.trainer.is_global_zero:
            return
        err = x0_error(self.saved_model(), self.items, cfg.x0_t, seed=cfg.seed)
        self.x0_rows.append(f"{step}," + ",".join(f"{err[t]:.5g}" for t in cfg.x0_t))
        header = "step," + ",".join(f"x0_error_A_t{t}" for t in cfg.x0_t)
        write_text(self.run.path / "x0_error.csv", "\n".join([header, *self.x0_rows]) + "\n")
        score = float(np.mean(list(err.values())))
        if score < self.best["score"]:
            self.best = {"score": score, "step": step, "x0_error_A": err}
            _save(self.saved_model(), self.run.checkpoints / "best.ckpt", step, cfg,
                  {"x0_error_A": err})  # fmt: skip
            write_json(self.run.checkpoints / "best.json", self.best)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["standin"] = {"best": self.best, "x0_rows": self.x0_rows}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("standin") or {}
        self.best = saved.get("best", self.best)
        self.x0_rows = list(saved.get("x0_rows", []))


def train_standin(cfg: StandinConfig, resume: bool = True, progress: bool = True) -> dict[str, Any]:
    """Train the stand-in (a Lightning run of ``moltune.common.training``); writes
    OUT/checkpoints/{last.ckpt (Lightning), standin.ckpt (DiffSBDD layout)}, OUT/metrics.csv,
    OUT/eval.json, OUT/report.md, OUT/plots/. Resumes from last.ckpt when present."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from moltune.common.io import write_json, write_text
    from moltune.common.training import (
        check_positive,
        check_run_folder,
        check_trainer_config,
        fit,
        make_trainer,
        open_run,
    )  # fmt: skip
    from moltune.sbdd.checkpoint import load_checkpoint
    from moltune.sbdd.model import LigandDiffusionModel

    if cfg.lr_schedule not in ("cosine", "constant"):
        raise InvalidInputError(f"lr_schedule must be cosine or constant, got {cfg.lr_schedule!r}")
    if cfg.select not in ("last", "x0"):
        raise InvalidInputError(f"select must be last or x0, got {cfg.select!r}")
    for name in ("steps", "batch_size", "save_every"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidInputError(f"{name} must be an integer >= 1, got {v!r}")
    check_positive(lr=cfg.lr, grad_clip=cfg.grad_clip, t_power=cfg.t_power)
    if not (0 <= cfg.ema_decay < 1):
        raise InvalidInputError(f"ema_decay must be in [0, 1), got {cfg.ema_decay!r}")
    from moltune.sbdd.data import sbdd_data

    cfg = dataclasses.replace(cfg, data=str(sbdd_data(cfg.data, cfg.data_root)))
    check_trainer_config(cfg.trainer)
    last = run_last = Path(cfg.out) / "checkpoints" / "last.ckpt"
    last = check_run_folder(cfg.out, resume=resume and run_last.exists())
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    run = open_run(cfg.out, cfg)
    pdir = processed_dir(cfg.data, run.path, cfg.embedding)
    items = load_items(pdir, list(cfg.splits), list(cfg.complexes))
    if cfg.ligand_at_pocket_com:
        items = [centre_ligand_on_pocket(d) for d in items]
    model = build_model(cfg, items).train()
    module = StandinModule(model, cfg, items, run)
    ds = StandinBatches(items, cfg, model.ddpm.T, cfg.steps)
    start = lambda: int(module.trainer.global_step) if module._trainer else 0
    loader = torch.utils.data.DataLoader(ds, batch_size=None, sampler=_Batches(start, cfg.steps))
    ckpt = ModelCheckpoint(dirpath=run.checkpoints, save_last=True, save_top_k=0,
                           every_n_train_steps=cfg.save_every, enable_version_counter=False)
    trainer = make_trainer(cfg.trainer, run, [ckpt], progress=progress,
                           flush_every=cfg.save_every, max_steps=cfg.steps, max_epochs=-1,
                           limit_val_batches=0, use_distributed_sampler=False)  # fmt: skip
    if last is not None:
        log.info("resuming stand-in training from %s", last)
    t0 = time.perf_counter()
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(does not have many workers|not resumable)")
        fit(trainer, module, run, last, train_dataloaders=loader, weights_only=False)
    if not trainer.is_global_zero:
        return {"rank": trainer.global_rank}
    names = {"complexes": [d["name"] for d in items]}
    if cfg.select == "x0" and (run.checkpoints / "best.ckpt").is_file():
        ck = load_checkpoint(run.checkpoints / "best.ckpt")
        chosen = LigandDiffusionModel(ck.hyper_parameters)
        chosen.load_diffsbdd_state_dict(ck.state_dict, where="best.ckpt")
        sel_step = int(ck.meta.get("global_step", cfg.steps))
        x0_sel = ck.hyper_parameters.get("standin", {}).get("x0_error_A")
    else:
        chosen, sel_step = module.saved_model().cpu(), cfg.steps
        x0_sel = x0_error(chosen, items, cfg.x0_t, seed=cfg.seed) if cfg.x0_every else None
    final = _save(chosen, run.checkpoints / "standin.ckpt", sel_step, cfg,
                  {**names, "x0_error_A": x0_sel})
    result = evaluate_standin(final, items, cfg, run)
    result["selected_step"] = sel_step
    result["x0_error_A"] = x0_sel
    result["checkpoint_sha256"] = sha256_file(final)
    result["train_seconds_this_session"] = round(time.perf_counter() - t0, 1)
    write_json(run.path / "eval.json", result)
    write_text(run.report, standin_report(result, cfg))
    return result


def x0_error(model, items: list[dict[str, Any]], t_values=(20, 50, 100, 200),
             n_copies: int = 16, seed: int = 0) -> dict[int, float]:
    """One-network-call denoising error: RMS per atom (Å) of the predicted clean ligand
    positions against the reference at each diffusion step ``t`` (ligand-centred frame),
    over ``n_copies`` noise draws per complex.

    A memorising model must reach well under the bond builder's tolerance (~0.2 Å per atom) at
    small ``t``; doing nothing (x0 = z_t / alpha_t) gives sqrt(3) sigma_t / alpha_t.
    """
    from moltune.sbdd.diffusion import gaussian_noise
    from moltune.sbdd.evaluation import complex_batch

    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out: dict[int, float] = {}
    with torch.no_grad():
        for t in t_values:
            se, n_atoms = 0.0, 0
            for d in items:
                b = complex_batch([d] * n_copies)
                ligand, pocket = model.ligand_pocket(b)
                res = model.ddpm.loss(ligand, pocket, t_int=torch.full((n_copies,), int(t)),
                                      noise=gaussian_noise(gen), training=True)
                ref = ligand["x"].reshape(n_copies, -1, 3)
                ref = ref - ref.mean(1, keepdim=True)
                hat = (res.raw["xh_lig_hat"][:, :3] * model.ddpm.norm_values[0]
                       ).reshape(n_copies, -1, 3)
                se += float(((hat - ref) ** 2).sum()) / n_copies
                n_atoms += ref.shape[1]
            out[int(t)] = math.sqrt(se / n_atoms)
    model.train(was_training)
    return out


def evaluate_standin(ckpt: Path, items: list[dict[str, Any]], cfg: StandinConfig,
                     run=None) -> dict[str, Any]:
    """Validity / connectivity of molecules generated for the training pockets."""
    from moltune.sbdd.evaluation import evaluate_pockets
    from moltune.sbdd.model import LigandDiffusionModel

    model = LigandDiffusionModel.from_checkpoint(ckpt)
    sel = items if not cfg.eval_complexes else items[: cfg.eval_complexes]
    res = evaluate_pockets(model, sel, cfg.eval_n_samples, cfg.eval_timesteps, seed=cfg.seed,
                           num_atoms="reference", progress=True)
    out = {"checkpoint": str(ckpt), "n_pockets": len(sel), "n_samples_per_pocket":
           cfg.eval_n_samples, "timesteps": cfg.eval_timesteps, "summary": res["summary"],
           "per_pocket": {k: {m: v.get(m) for m in ("validity", "connectivity",
                                                    "valid_and_connected")}
                          for k, v in res["per_pocket"].items()}}
    if run is not None:
        _plot(out, run.plots / "standin_eval.png")
        _plot_loss(run.metrics, run.plots / "standin_loss.png")
    return out


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["per_pocket"])
    v = [result["per_pocket"][n]["validity"] or 0 for n in names]
    c = [result["per_pocket"][n]["valid_and_connected"] or 0 for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names)), 3.5))
    ax.bar(x - 0.2, v, 0.4, label="valid")
    ax.bar(x + 0.2, c, 0.4, label="valid and connected")
    ax.set_xticks(x, names, rotation=60)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of samples")
    ax.set_title(f"stand-in, training pockets ({result['timesteps']} denoising steps)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_loss(metrics: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    if not metrics.is_file():
        return
    df = pd.read_csv(metrics)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(df["step"], df["train/loss"], alpha=0.3, lw=0.6)
    ax.plot(df["step"], df["train/loss"].rolling(50, min_periods=1).mean(), lw=1.5)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("train/loss (l2)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def standin_report(result: dict[str, Any], cfg: StandinConfig) -> str:
    s = result["summary"]
    lines = [
        "# Stand-in DiffSBDD model (trained here from scratch; memorises its complexes)",
        "",
        f"- checkpoint: `{result['checkpoint']}`",
        f"- layout: published (joint_nf 32, hidden_nf 128, 5 layers, T 500) with egnn "
        f"overrides {cfg.egnn_overrides}",
        f"- trained {cfg.steps} steps, batch {cfg.batch_size}, lr {cfg.lr}, on "
        f"{result['n_pockets']} complexes of splits {cfg.splits}",
        f"- evaluation: {result['n_samples_per_pocket']} samples per training pocket, "
        f"{result['timesteps']} denoising steps, ligand size = reference",
        f"- selected weights: step {result.get('selected_step', cfg.steps)} "
        f"({'lowest x0 error' if cfg.select == 'x0' else 'final'}"
        f"{', EMA ' + str(cfg.ema_decay) if cfg.ema_decay else ''}); sha256 "
        f"{result.get('checkpoint_sha256', '?')[:16]}",
        "- one-call denoising error (Å per atom) at t: "
        + (", ".join(f"{t}: {v:.3f}" for t, v in (result.get("x0_error_A") or {}).items())
           or "not measured"),
        "",
        f"validity {s['validity']:.3f}, connectivity (of valid) {s['connectivity']:.3f}, "
        f"valid and connected {s['valid_and_connected']:.3f}",
        "",
        "| pocket | validity | valid and connected |",
        "|---|---|---|",
    ]
    for k, v in result["per_pocket"].items():
        lines.append(f"| {k} | {v['validity']:.2f} | {v['valid_and_connected']:.2f} |")
    return "\n".join(lines) + "\n"


def tiny_checkpoint(path: str | Path, items: list[dict[str, Any]] | None = None,
                    hidden_nf: int = 16, n_layers: int = 1, joint_nf: int = 8,
                    seed: int = 0) -> Path:
    """A small untrained model of the published layout (same keys, small sizes) written as a
    DiffSBDD checkpoint: for tests and smoke runs. ``items`` give the size histogram."""
    from moltune.sbdd.checkpoint import save_checkpoint
    from moltune.sbdd.model import LigandDiffusionModel

    hp = standin_hparams({"hidden_nf": hidden_nf, "n_layers": n_layers, "joint_nf": joint_nf,
                          "edge_cutoff_pocket": 0.5},
                         size_histogram(items) if items else None)
    torch.manual_seed(seed)
    model = LigandDiffusionModel(hp)
    return save_checkpoint(path, model.diffsbdd_state_dict(), hp)
