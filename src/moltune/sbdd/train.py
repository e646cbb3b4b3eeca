"""Fine-tuning a DiffSBDD-layout model with its FiLM adapter (adapter-only or full), in Lightning.

``FinetuneModule`` is passive: it holds a :class:`~moltune.sbdd.model.LigandDiffusionModel`,
computes the l2 training loss and the validation loss, builds AdamW (weight decay) with a linear
warm-up then cosine learning-rate schedule, and logs the adapter diagnostics (contract names
``adapter/gamma_mean`` ... ``adapter/grad_norm``) every ``diagnostics.every_n_steps`` steps.
Everything that judges the run is a callback: generation quality
(:class:`moltune.sbdd.evaluation.GenerationEvalCallback`), the red-flag monitors of
:mod:`moltune.validation.monitors` (adapter drift, gradient norm, connectivity floor, val/train
ratio, non-finite values), top-k + last checkpoints that never save a broken state, optional early
stopping on connectivity.

Run folder (:class:`moltune.common.run.RunDir`): ``config.yaml``, ``metrics.csv`` (CSVLogger
format), ``checkpoints/`` (Lightning checkpoints, plus ``adapter-*.pt`` adapter-only files and, for
full fine-tuning, ``model-*.ckpt`` in the DiffSBDD layout), ``plots/``, ``report.md``,
``stopped.json`` when a monitor stopped the run (the CLI then exits with status 3).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from moltune.common.errors import InvalidInputError
from moltune.common.training import TrainerConfig, lr_factor
from moltune.validation import metrics as mn
from moltune.validation.monitors import MonitorConfig

__all__ = ["FinetuneConfig", "FinetuneModule", "lr_factor", "train"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- configuration
@dataclass
class DataConfig:
    """Where the complexes come from and how they are split."""

    processed: str = ""  # a folder written by `moltune sbdd process` (train.npz, val.npz, ...)
    complexes: str = ""  # or raw complexes (<id>/protein.pdb + ligand.sdf): processed into RUN/data
    root: str | None = None  # data root the two are named in (default $MOLTUNE_DATA, else ./data)
    embedding: str = "deterministic"  # provider when processing raw complexes
    val_fraction: float = 0.2
    train_subset: list[str] = field(default_factory=list)  # keep only these training complexes
    centre: bool = True
    # Translate each ligand rigidly onto its pocket's centre of mass (train and val), where the
    # sampler puts it: for a pretrained model trained that way (the stand-in preset).
    ligand_at_pocket_com: bool = False


@dataclass
class FiLMSettings:
    """The adapter attached to the pretrained model (see moltune.sbdd.film.FiLMConfig)."""

    hidden_dims: list[int] = field(default_factory=lambda: [128])
    dropout: float = 0.0
    activation: str = "silu"
    init: str = "identity"
    checkpoint: str = ""  # start from an adapter-only checkpoint instead


@dataclass
class OptimConfig:
    lr: float = 1.0e-4
    weight_decay: float = 1.0e-2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 10
    schedule: str = "cosine"  # cosine | constant (after warm-up)
    min_lr_fraction: float = 0.1
    grad_clip: float = 1.0  # L2 norm; 0 disables


@dataclass
class EvalConfig:
    """Generation on the validation pockets (logs val/validity, val/connectivity, val/qed, val/sa)."""

    every_n_steps: int = 50
    n_samples: int = 4
    timesteps: int = 50
    seed: int = 0
    num_atoms: str = "reference"  # reference | histogram
    batch_size: int = 16
    max_pockets: int = 0  # 0: every validation pocket
    pockets: list[str] = field(default_factory=list)  # only these validation complexes (ids)


@dataclass
class DiagnosticsConfig:
    every_n_steps: int = 10


@dataclass
class CheckpointConfig:
    monitor: str = "val/connectivity"
    mode: str = "max"
    top_k: int = 2


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    metric: str = "val/connectivity"
    mode: str = "max"
    patience: int = 3  # evaluations without improvement
    min_delta: float = 0.0


@dataclass
class FinetuneConfig:
    """``moltune sbdd train`` (defaults <- preset <- flags)."""

    checkpoint: str = ""  # pretrained DiffSBDD checkpoint (.ckpt)
    out: str = "runs/sbdd/finetune"
    mode: str = "adapter"  # adapter (only FiLM trains) | full
    seed: int = 0
    max_steps: int = 100
    batch_size: int = 4
    val_every_n_steps: int = 25
    threads: int = 0
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    film: FiLMSettings = field(default_factory=FiLMSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    checkpointing: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    monitors: MonitorConfig = field(default_factory=MonitorConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> None:
        if not self.checkpoint:
            raise InvalidInputError("no pretrained checkpoint: set `checkpoint` in the config")
        if self.mode not in ("adapter", "full"):
            raise InvalidInputError(f"mode must be 'adapter' or 'full', got {self.mode!r}")
        if self.optim.schedule not in ("cosine", "constant"):
            raise InvalidInputError("optim.schedule must be cosine or constant")
        if not (self.data.processed or self.data.complexes):
            raise InvalidInputError("set data.processed (processed folder) or data.complexes")
        if self.max_steps < 1 or self.batch_size < 1 or self.val_every_n_steps < 1:
            raise InvalidInputError("max_steps, batch_size and val_every_n_steps must be >= 1")
        if self.checkpointing.mode not in ("min", "max") or self.early_stopping.mode not in (
                "min", "max"):
            raise InvalidInputError("checkpointing.mode / early_stopping.mode must be min or max")
        from moltune.common.training import check_positive, check_trainer_config

        o = self.optim
        check_positive(**{"optim.lr": o.lr})
        if not (0 <= o.min_lr_fraction <= 1) or o.weight_decay < 0 or o.grad_clip < 0:
            raise InvalidInputError("optim.min_lr_fraction must be in [0, 1], optim.weight_decay "
                                    "and optim.grad_clip >= 0")  # fmt: skip
        if not isinstance(o.warmup_steps, int) or o.warmup_steps < 0:
            raise InvalidInputError(f"optim.warmup_steps must be an integer >= 0, "
                                    f"got {o.warmup_steps!r}")  # fmt: skip
        if self.data.processed and not (Path(self.data.processed) / "train.npz").is_file():
            raise InvalidInputError(f"{self.data.processed} is not a processed folder (no "
                                    "train.npz); make it with `moltune sbdd process --data "
                                    f"COMPLEXES --out {self.data.processed}`, set data.complexes "
                                    "or pass --data-root DIR")  # fmt: skip
        if not self.data.processed:
            from moltune.sbdd.data import sbdd_data

            sbdd_data(self.data.complexes)
        if not Path(self.checkpoint).is_file():
            raise InvalidInputError(f"pretrained checkpoint {self.checkpoint} not found")
        check_trainer_config(self.trainer)


# --------------------------------------------------------------------------- data
def resolve_data_paths(cfg: FinetuneConfig) -> FinetuneConfig:
    """``data.processed`` / ``data.complexes`` as named under the data root (``data.root``)."""
    import dataclasses

    from moltune.common.training import resolve_data

    d = cfg.data
    named = {k: resolve_data(getattr(d, k), d.root) for k in ("processed", "complexes")
             if getattr(d, k)}  # fmt: skip
    return dataclasses.replace(cfg, data=dataclasses.replace(d, **named))


def resolve_processed(cfg: FinetuneConfig, run_dir: Path) -> Path:
    """The processed folder (processing raw complexes into RUN/data when needed)."""
    d = cfg.data
    if d.processed:
        p = Path(d.processed)
        if not (p / "train.npz").is_file():
            raise InvalidInputError(f"{p} is not a processed folder (no train.npz); "
                                    "run `moltune sbdd process` or set data.complexes")
        return p
    target = run_dir / "data"
    if not (target / "train.npz").is_file():
        from moltune.sbdd.data import process_complexes

        process_complexes(d.complexes, target, val_fraction=d.val_fraction,
                          embedding=d.embedding, progress=cfg.progress)
    return target


def load_splits(cfg: FinetuneConfig, pdir: Path) -> tuple[list[dict], list[dict]]:
    from moltune.sbdd.data import load_processed_split

    train = load_processed_split(pdir, "train")
    val = load_processed_split(pdir, "val") if (pdir / "val.npz").is_file() else []
    if cfg.data.train_subset:
        keep = set(cfg.data.train_subset)
        missing = keep - {d["name"] for d in train}
        if missing:
            raise InvalidInputError(f"train_subset names {sorted(missing)} not in {pdir}/train.npz")
        train = [d for d in train if d["name"] in keep]
    if not train:
        raise InvalidInputError(f"{pdir}: no training complexes")
    if not val:
        raise InvalidInputError(f"{pdir}: no validation complexes (val.npz empty or missing)")
    if cfg.data.ligand_at_pocket_com:
        from moltune.sbdd.standin import centre_ligand_on_pocket

        train = [centre_ligand_on_pocket(d) for d in train]
        val = [centre_ligand_on_pocket(d) for d in val]
    for d in train + val:
        if d.get("embedding") is None:
            raise InvalidInputError(f"{pdir}: complex {d['name']} has no embedding "
                                    f"(embeddings/{d['name']}.npy); process with an embedding")
    return train, val


class ComplexDataset(torch.utils.data.Dataset):
    """Processed complexes; item ``i`` or ``(epoch, i)`` (from the sampler) carries its key
    ``(epoch, i)``, from which the module draws that item's diffusion noise."""

    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i) -> dict:
        epoch, i = i if isinstance(i, tuple) else (0, i)
        return {**self.items[i], "key": (int(epoch), int(i))}


def collate(items: list[dict], centre: bool) -> dict[str, torch.Tensor]:
    """A DiffSBDD-layout batch with ``item_key`` [B, 2]: each item's (epoch, dataset index)."""
    from moltune.sbdd.evaluation import complex_batch

    batch = complex_batch(items, centre=centre)
    batch["item_key"] = torch.tensor([d["key"] for d in items], dtype=torch.long)
    return batch


class FinetuneData(pl.LightningDataModule):
    """Training batches (``batch_size`` is the global batch: each DDP rank draws its share of an
    epoch-seeded permutation, :class:`moltune.common.training.EpochShardSampler`) and the
    validation set (each rank its shard, :class:`moltune.common.training.ShardSampler`)."""

    def __init__(self, train: list[dict], val: list[dict], batch_size: int, seed: int,
                 centre: bool):  # fmt: skip
        super().__init__()
        self.train, self.val, self.batch_size, self.seed = train, val, batch_size, seed
        self.centre = centre

    def _collate(self):
        from functools import partial

        return partial(collate, centre=self.centre)

    def train_dataloader(self):
        from moltune.common.training import EpochShardSampler, world

        size = world()[1]
        batch = min(self.batch_size, len(self.train))
        if batch % size or batch < size:
            raise InvalidInputError(f"batch size {batch} cannot be split over {size} processes "
                                    "(the batch is global)")  # fmt: skip
        per_rank = batch // size
        sampler = EpochShardSampler(len(self.train), self.seed, per_rank_batch=per_rank)
        return torch.utils.data.DataLoader(ComplexDataset(self.train), batch_size=per_rank,
                                           sampler=sampler, drop_last=True,
                                           collate_fn=self._collate())  # fmt: skip

    def val_dataloader(self):
        from moltune.common.training import ShardSampler

        sampler = ShardSampler(len(self.val))
        return torch.utils.data.DataLoader(ComplexDataset(self.val),
                                           batch_size=max(1, len(sampler)), sampler=sampler,
                                           collate_fn=self._collate())  # fmt: skip


# --------------------------------------------------------------------------- model
def build_model(cfg: FinetuneConfig):
    """Pretrained model + FiLM adapter; adapter-only mode freezes the DiffSBDD part."""
    from moltune.sbdd.film import FiLMConfig, load_adapter
    from moltune.sbdd.model import LigandDiffusionModel

    model = LigandDiffusionModel.from_checkpoint(cfg.checkpoint)
    if cfg.film.checkpoint:
        model.set_film(load_adapter(cfg.film.checkpoint))
    else:
        torch.manual_seed(cfg.seed)
        model.set_film(FiLMConfig(joint_nf=model.joint_nf, hidden_dims=tuple(cfg.film.hidden_dims),
                                  dropout=cfg.film.dropout, activation=cfg.film.activation,
                                  init=cfg.film.init))
    model.freeze_base(cfg.mode == "adapter")
    return model.train()  # from_checkpoint returns eval mode; the l2 loss needs train mode


class FinetuneModule(pl.LightningModule):
    """Passive LightningModule: loss, optimiser and schedule, adapter diagnostics."""

    def __init__(self, model, cfg: FinetuneConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self._diag_embeddings: torch.Tensor | None = None
        self._adapter_grad_norm: float | None = None

    # -- helpers
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def set_diagnostic_embeddings(self, embeddings: np.ndarray) -> None:
        """Embeddings over which gamma/beta statistics are computed (the training pockets)."""
        self._diag_embeddings = torch.as_tensor(np.asarray(embeddings)).float()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the frozen flags are not in the state dict: reapply them
        self.model.freeze_base(self.cfg.mode == "adapter")

    def item_draws(self, batch, stream: int, lowest: int = 0):
        """(t_int [B], noise) drawn for each item from (seed, stream, epoch, dataset index)
        alone, so an item's noise is the same whatever rank or batch draws it."""
        from moltune.sbdd.diffusion import item_noise

        gens = [np.random.default_rng([self.cfg.seed, stream, e, i])
                for e, i in batch["item_key"].tolist()]  # fmt: skip
        t_int = torch.tensor([int(g.integers(lowest, self.model.ddpm.T + 1)) for g in gens],
                             device=self.device)  # fmt: skip
        return t_int, item_noise(gens, batch["num_lig_atoms"].tolist())

    # -- Lightning
    def training_step(self, batch, batch_idx):
        t_int, noise = self.item_draws(batch, stream=0)
        out = self.model(batch, embeddings=batch["embeddings"], t_int=t_int, noise=noise)
        b = len(batch["num_lig_atoms"])
        self.log(mn.TRAIN_LOSS, out.loss, on_step=True, on_epoch=False, prog_bar=True,
                 batch_size=b, sync_dist=True)
        return out.loss

    def validation_step(self, batch, batch_idx):
        # the VLB in eval mode is a large positive number; the l2 training objective is what
        # the val/train ratio monitor must compare against, so use it, with fixed noise.
        b = len(batch["num_lig_atoms"])
        t_int, noise = self.item_draws(batch, stream=1)
        T = self.model.ddpm.T
        losses = []
        for rep in range(4):
            out = self.model.ddpm.loss(*self.model.ligand_pocket(batch),
                                       t_int=(t_int + rep * (T // 4)) % (T + 1), noise=noise,
                                       film=self.model.film_params(batch["embeddings"], b),
                                       training=True)  # fmt: skip
            losses.append(out.loss)
        loss = torch.stack(losses).mean()
        # count-weighted over the ranks' shards: the one-process figure
        self.log(mn.VAL_LOSS, loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=b,
                 sync_dist=True)
        # validation set size, for `moltune runs diagnose` (small-validation finding)
        self.log(mn.VAL_N_SAMPLES, float(b), on_step=False, on_epoch=True, reduce_fx="sum",
                 batch_size=1, sync_dist=True)
        return loss

    def configure_optimizers(self):
        o = self.cfg.optim
        params = self.trainable_parameters()
        if not params:
            raise InvalidInputError("nothing to train: no parameter requires gradients")
        opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay,
                                betas=tuple(o.betas))
        total = self.cfg.max_steps
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, o.warmup_steps, total, o.schedule, o.min_lr_fraction))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        # Gradient norm of the adapter, before clipping (Lightning clips after this hook).
        film = self.model.film
        if film is None:
            return
        grads = [p.grad.detach().float().norm(2) for p in film.parameters() if p.grad is not None]
        self._adapter_grad_norm = (float(torch.linalg.vector_norm(torch.stack(grads)).item())
                                   if grads else 0.0)
        total = [p.grad.detach().float().norm(2) for p in self.parameters() if p.grad is not None]
        if total:
            self.log(mn.TRAIN_GRAD_NORM, float(torch.linalg.vector_norm(torch.stack(total))),
                     on_step=True, on_epoch=False, sync_dist=True)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        every = max(1, self.cfg.diagnostics.every_n_steps)
        step = int(self.global_step)  # already incremented for this batch
        if step % every == 0 or step == 1:
            self.log_adapter_diagnostics()

    def log_adapter_diagnostics(self) -> dict[str, float]:
        film = self.model.film
        if film is None or self._diag_embeddings is None:
            return {}
        was = film.training
        film.eval()
        stats = film.stats(self._diag_embeddings.to(film.last.weight))
        film.train(was)
        if self._adapter_grad_norm is not None:
            stats["adapter/grad_norm"] = self._adapter_grad_norm
        for k, v in stats.items():
            self.log(k, float(v), on_step=True, on_epoch=False, sync_dist=True)
        return stats


# --------------------------------------------------------------------------- checkpoints
class ExportCallback(pl.Callback):
    """Write loadable artefacts next to Lightning's checkpoints: ``adapter-last.pt`` (adapter
    only) and for full fine-tuning ``model-last.ckpt`` (DiffSBDD layout), whenever a Lightning
    checkpoint is saved and the state is good; ``adapter-best.pt`` from the best checkpoint at
    the end."""

    def __init__(self, run_dir: Path, full: bool):
        self.run_dir = Path(run_dir)
        self.full = full

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        from moltune.validation.monitors import state_is_good

        if trainer.sanity_checking or not state_is_good(trainer):
            return
        ck = self.run_dir / "checkpoints"
        extra = {"step": int(trainer.global_step), "source": str(pl_module.cfg.checkpoint)}
        pl_module.model.save_adapter(ck / "adapter-last.pt", extra=extra)
        if self.full:
            pl_module.model.save_diffsbdd_checkpoint(ck / "model-last.ckpt")


def export_best(run_dir: Path, best_path: str | None, cfg: FinetuneConfig) -> dict[str, str]:
    """From the best Lightning checkpoint: adapter-best.pt (and model-best.ckpt in full mode)."""
    if not best_path or not Path(best_path).is_file():
        return {}
    model = build_model(cfg)
    state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
    module_state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    model.load_state_dict(module_state)
    ck = run_dir / "checkpoints"
    out = {"adapter_best": str(model.save_adapter(ck / "adapter-best.pt",
                                                  extra={"from": str(best_path)}))}
    if cfg.mode == "full":
        out["model_best"] = str(model.save_diffsbdd_checkpoint(ck / "model-best.ckpt"))
    return out


# --------------------------------------------------------------------------- run
def _flat_metrics(run_dir: Path) -> dict[str, Any]:
    import pandas as pd

    p = run_dir / "metrics.csv"
    if not p.is_file():
        return {}
    df = pd.read_csv(p)
    out = {}
    for c in df.columns:
        if c in ("epoch", "step"):
            continue
        s = df[c].dropna()
        if len(s):
            out[c] = {"last": float(s.iloc[-1]), "n": len(s)}
    return out


def _plots(run_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    p = run_dir / "metrics.csv"
    if not p.is_file():
        return []
    df = pd.read_csv(p)
    panels = [("loss", ["train/loss", "val/loss"]),
              ("generation", ["val/validity", "val/connectivity", "val/qed", "val/sa"]),
              ("adapter", ["adapter/gamma_mean", "adapter/gamma_std", "adapter/beta_mean",
                           "adapter/beta_std", "adapter/gamma_drift"]),
              ("gradients", ["adapter/grad_norm", "train/grad_norm"])]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for ax, (title, cols) in zip(axes, panels):
        for c in cols:
            if c in df.columns and df[c].notna().any():
                s = df[["step", c]].dropna()
                ax.plot(s["step"], s[c], marker="o" if len(s) < 30 else None, ms=3, label=c)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = run_dir / "plots" / "training.png"
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]


def write_report(run_dir: Path, cfg: FinetuneConfig, info: dict[str, Any]) -> Path:
    from moltune.common.io import write_text
    from moltune.validation.monitors import read_stopped

    stopped = read_stopped(run_dir)
    m = info.get("metrics", {})

    def last(k):
        v = m.get(k, {}).get("last")
        return "n/a" if v is None else f"{v:.4g}"

    lines = [
        f"# FiLM fine-tuning run ({cfg.mode})", "",
        f"- pretrained checkpoint: `{cfg.checkpoint}`",
        f"- data: `{info.get('processed')}`: {info.get('n_train')} training / "
        f"{info.get('n_val')} validation complexes ({', '.join(info.get('val_names', []))})",
        f"- trainable parameters: {info.get('n_trainable')} of {info.get('n_total')}",
        f"- steps: {info.get('global_step')} of {cfg.max_steps}",
        f"- status: **{'STOPPED by ' + stopped['monitor'] if stopped else 'completed'}**"
        + (f" — {stopped.get('message')}" if stopped else ""),
        f"- best checkpoint ({cfg.checkpointing.monitor}, {cfg.checkpointing.mode}): "
        f"`{info.get('best_checkpoint')}`",
        "", "| metric | last |", "|---|---|",
    ]
    for k in ("train/loss", "val/loss", "val/validity", "val/connectivity", "val/qed", "val/sa",
              "adapter/gamma_mean", "adapter/gamma_drift", "adapter/beta_std",
              "adapter/grad_norm"):
        lines.append(f"| {k} | {last(k)} |")
    if info.get("n_val", 0) < 3:
        lines += ["", f"WARNING: {info.get('n_val')} validation complex(es) cannot support a "
                  "conclusion about generalisation."]
    return write_text(run_dir / "report.md", "\n".join(lines) + "\n")


def train(cfg: FinetuneConfig, resume: bool = False) -> dict[str, Any]:
    """Run fine-tuning; returns a summary dict (``stopped``: the stopped.json content or None)."""
    import lightning.pytorch as L
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor

    from moltune.common.io import write_json
    from moltune.common.run import package_versions
    from moltune.common.training import check_run_folder, fit, make_trainer, open_run
    from moltune.sbdd.evaluation import GenerationEvalCallback
    from moltune.validation.monitors import GuardedModelCheckpoint, default_monitors, read_stopped

    cfg = resolve_data_paths(cfg)
    cfg.validate()
    last_ckpt = check_run_folder(cfg.out, resume)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    run = open_run(cfg.out, cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    pdir = resolve_processed(cfg, run.path)
    train_items, val_items = load_splits(cfg, pdir)
    model = build_model(cfg)
    module = FinetuneModule(model, cfg)
    module.set_diagnostic_embeddings(np.stack([d["embedding"] for d in train_items]))
    data = FinetuneData(train_items, val_items, cfg.batch_size, cfg.seed, cfg.data.centre)

    e = cfg.eval
    eval_items = val_items
    if e.pockets:
        missing = set(e.pockets) - {d["name"] for d in val_items}
        if missing:
            raise InvalidInputError(f"eval.pockets {sorted(missing)} are not validation complexes "
                                    f"({[d['name'] for d in val_items]})")
        eval_items = [d for d in val_items if d["name"] in set(e.pockets)]
    eval_items = eval_items[: e.max_pockets] if e.max_pockets else eval_items
    evaluator = GenerationEvalCallback(eval_items, e.every_n_steps, e.n_samples, e.timesteps,
                                       e.seed, e.num_atoms, e.batch_size)
    c = cfg.checkpointing
    name = c.monitor.replace("/", "_")
    ckpt_cb = GuardedModelCheckpoint(
        dirpath=run.checkpoints, filename=f"step{{step:05d}}-{name}{{{c.monitor}:.3f}}",
        auto_insert_metric_name=False, monitor=c.monitor, mode=c.mode, save_top_k=c.top_k,
        save_last=True, every_n_train_steps=None, save_on_train_epoch_end=False)
    callbacks: list[Any] = [evaluator, *default_monitors(cfg.monitors, run.path), ckpt_cb,
                            ExportCallback(run.path, cfg.mode == "full"),
                            LearningRateMonitor(logging_interval="step")]
    es = cfg.early_stopping
    if es.enabled:
        callbacks.append(EarlyStopping(monitor=es.metric, mode=es.mode, patience=es.patience,
                                       min_delta=es.min_delta, check_on_train_epoch_end=False))
    trainer = make_trainer(
        cfg.trainer, run, callbacks, progress=cfg.progress, default_root_dir=str(run.path),
        max_steps=cfg.max_steps, max_epochs=-1,
        gradient_clip_val=cfg.optim.grad_clip or None, gradient_clip_algorithm="norm",
        val_check_interval=cfg.val_every_n_steps, check_val_every_n_epoch=None,
        deterministic=False, use_distributed_sampler=False,
    )  # fmt: skip
    fit(trainer, module, run, last_ckpt, datamodule=data)
    if not trainer.is_global_zero:
        return {"run_dir": str(run.path), "global_step": int(trainer.global_step), "rank": 1}

    # CSVLogger writes RUN/metrics.csv (save_dir/name/version '' = RUN)
    stopped = read_stopped(run.path)
    exported = export_best(run.path, ckpt_cb.best_model_path, cfg)
    info = {
        "run_dir": str(run.path), "processed": str(pdir), "checkpoint": cfg.checkpoint,
        "mode": cfg.mode, "global_step": int(trainer.global_step), "max_steps": cfg.max_steps,
        "n_train": len(train_items), "n_val": len(val_items),
        "train_names": [d["name"] for d in train_items], "val_names": [d["name"] for d in val_items],
        "n_trainable": sum(p.numel() for p in module.trainable_parameters()),
        "n_total": sum(p.numel() for p in model.parameters()),
        "best_checkpoint": ckpt_cb.best_model_path or None,
        "best_score": float(ckpt_cb.best_model_score) if ckpt_cb.best_model_score is not None
        else None,
        "last_checkpoint": str(run.checkpoints / "last.ckpt")
        if (run.checkpoints / "last.ckpt").is_file() else None,
        "exported": exported, "stopped": stopped,
        "generation_evals": evaluator.history, "versions": package_versions(),
    }
    info["metrics"] = _flat_metrics(run.path)
    info["plots"] = _plots(run.path)
    write_json(run.path / "summary.json", info)
    write_report(run.path, cfg, info)
    return info
