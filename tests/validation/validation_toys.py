"""Tiny real Lightning runs with known pathologies, for the validation tests (CPU, seconds).

- ``ReplayModule``: a real Lightning run whose logged metrics follow a given per-epoch history
  (used to reproduce the figures of the issue exactly) and whose gradient norm at chosen steps is
  a given number (loss = scale * w with w = 0 and lr = 0, so grad = scale exactly).
- ``TwoDirectionToy``: a scalar affine "flow" y = a x in 3D between two harmonic wells, trained on
  the forward energy without its log-det term (the classic bug): a shrinks geometrically, the
  forward energy improves, T^-1(y) = y / a explodes while T^-1(T(x)) stays exact.
- ``Regression``: an MLP regression (healthy, lr = 0 never-learning, or tiny-data overfitting).
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

KT_SOURCE = 2.494  # kJ/mol, 300 K
KT_TARGET = 3.741  # kJ/mol, 450 K


def _loader(n_batches: int, batch: int = 1) -> DataLoader:
    return DataLoader(TensorDataset(torch.zeros(n_batches * batch, 1)), batch_size=batch)


class ReplayModule(L.LightningModule):
    """Logs ``val_history[key][epoch]`` at each validation and ``train_history[key][epoch]`` at
    each training step (on_step and on_epoch); ``grad_scale[global_step]`` sets the gradient."""

    def __init__(self, val_history: dict[str, list[float]], train_history: dict[str, list[float]]
                 | None = None, grad_scale: dict[int, float] | None = None, n_batches: int = 2,
                 hparams: dict | None = None):
        super().__init__()
        self.val_history = val_history
        self.train_history = train_history or {}
        self.grad_scale = grad_scale or {}
        self.n_batches = n_batches
        self.w = nn.Parameter(torch.zeros(1))
        if hparams:
            self.save_hyperparameters(hparams)

    def training_step(self, batch, batch_idx):
        e = self.current_epoch
        for key, values in self.train_history.items():
            self.log(key, float(values[min(e, len(values) - 1)]), on_step=True, on_epoch=True)
        scale = self.grad_scale.get(self.global_step, 1.0)
        return (scale * self.w).sum()

    def validation_step(self, batch, batch_idx):
        e = self.current_epoch
        for key, values in self.val_history.items():
            self.log(key, float(values[min(e, len(values) - 1)]))

    def on_before_optimizer_step(self, optimizer):
        # callbacks have seen the gradient; keep w finite (lr = 0 times inf would be NaN)
        for p in self.parameters():
            if p.grad is not None:
                p.grad.zero_()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return _loader(self.n_batches)

    def val_dataloader(self):
        return _loader(1)


class TwoDirectionToy(L.LightningModule):
    """y = a x (3D); trained on E[U_target(a x)] / kT without the log-det term (the bug)."""

    def __init__(self, lr: float = 0.0667, n: int = 256):
        super().__init__()
        self.a = nn.Parameter(torch.ones(()))
        self.lr = lr
        g = torch.Generator().manual_seed(0)
        self.x_source = torch.randn(n, 3, generator=g)
        self.y_target = torch.randn(n, 3, generator=g)
        self.save_hyperparameters({"lr": lr, "n_val": n})

    @staticmethod
    def energy(z: torch.Tensor, kT: float) -> torch.Tensor:  # harmonic well, kJ/mol
        return kT * 0.5 * (z**2).sum(-1)

    def forward_loss(self, x):
        return (self.energy(self.a * x, KT_TARGET) / KT_TARGET).mean()

    def inverse_loss(self, y):
        return (self.energy(y / self.a, KT_SOURCE) / KT_SOURCE).mean() + 3 * torch.log(self.a.abs())

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = self.forward_loss(x)
        with torch.no_grad():
            self.log("train/loss_inverse", self.inverse_loss(x), on_step=True, on_epoch=True)
        self.log("train/loss_forward", loss, on_step=True, on_epoch=True)
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = self.x_source, self.y_target
        fwd = self.forward_loss(x)
        self.log("val/loss", fwd)
        self.log("val/loss_forward", fwd)
        self.log("val/loss_inverse", self.inverse_loss(y))
        self.log("val/energy_forward_kjmol", self.energy(self.a * x, KT_TARGET).mean())
        self.log("val/energy_inverse_kjmol", self.energy(y / self.a, KT_SOURCE).mean())
        self.log("val/energy_target_ref_kjmol", self.energy(y, KT_TARGET).mean())
        self.log("val/energy_source_ref_kjmol", self.energy(x, KT_SOURCE).mean())
        self.log("val/kT_target_kjmol", KT_TARGET)
        self.log("val/kT_source_kjmol", KT_SOURCE)
        rec = (self.a * x) / self.a
        self.log("val/reconstruction_rmsd_nm", ((rec - x) ** 2).sum(-1).mean().sqrt())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x_source), batch_size=128, shuffle=False)

    def val_dataloader(self):
        return _loader(1)


class Regression(L.LightningModule):
    """MLP regression of y = sin(2x) + noise; ``n_train`` small and many epochs -> overfits."""

    def __init__(self, n_train: int = 256, n_val: int = 128, hidden: int = 0, lr: float = 0.1,
                 noise: float = 0.1, batch_size: int = 32, optimizer: str = "sgd", seed: int = 0,
                 linear_target: bool = True, repeat: int = 1):
        super().__init__()
        self.save_hyperparameters()
        g = torch.Generator().manual_seed(seed)

        def data(n):
            x = torch.rand(n, 1, generator=g) * 4 - 2
            clean = 2 * x - 1 if linear_target else torch.sin(2 * x)
            return x, clean + noise * torch.randn(n, 1, generator=g)

        self.train_xy, self.val_xy = data(n_train), data(n_val)
        torch.manual_seed(seed)
        self.net = (nn.Linear(1, 1) if hidden == 0 else
                    nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                  nn.Tanh(), nn.Linear(hidden, 1)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = ((self.net(x) - y) ** 2).mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", ((self.net(x) - y) ** 2).mean())

    def configure_optimizers(self):
        if self.hparams.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self):
        x, y = (t.repeat(self.hparams.repeat, 1) for t in self.train_xy)
        return DataLoader(TensorDataset(x, y), batch_size=self.hparams.batch_size,
                          shuffle=True, generator=torch.Generator().manual_seed(1))

    def val_dataloader(self):
        return DataLoader(TensorDataset(*self.val_xy), batch_size=len(self.val_xy[0]))


def fit(module: L.LightningModule, run_dir: Path, epochs: int, callbacks=(), tensorboard: bool = False
        ) -> L.Trainer:
    """Train on CPU, logging to RUN/metrics.csv (moltune run-folder layout)."""
    loggers = [CSVLogger(str(run_dir), name="", version="")]
    if tensorboard:
        loggers.append(TensorBoardLogger(str(run_dir / "tb"), name="", version=""))
    callbacks = list(callbacks)
    trainer = L.Trainer(
        max_epochs=epochs, logger=loggers, default_root_dir=str(run_dir), callbacks=callbacks,
        enable_checkpointing=any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
        num_sanity_val_steps=0, accelerator="cpu", devices=1,
    )
    trainer.fit(module)
    return trainer


# ----------------------------------------------------------------------- figure-matched histories


def geometric(a: float, b: float, n: int) -> list[float]:
    return [a * (b / a) ** (i / (n - 1)) for i in range(n)]


def transport_history(n: int = 20) -> tuple[dict, dict]:
    """The transport run of the issue: reconstruction 1e-5 nm, inverse energy up to 5.6e12 kJ/mol,
    NaN validation in the last epochs, forward loss improving."""
    inv_energy = geometric(40.0, 5.6e12, n - 2) + [math.nan, math.nan]
    val = {
        "val/loss_forward": geometric(8.0, 0.9, n),
        "val/loss_inverse": geometric(9.0, 3.0e11, n - 2) + [math.nan, math.nan],
        "val/loss": geometric(17.0, 3.0e11, n - 2) + [math.nan, math.nan],
        "val/energy_forward_kjmol": [-70.0 + 300.0 * 0.7**i for i in range(n)],
        "val/energy_inverse_kjmol": inv_energy,
        "val/energy_target_ref_kjmol": [-70.0] * n,
        "val/energy_source_ref_kjmol": [-85.0] * n,
        "val/kT_target_kjmol": [KT_TARGET] * n,
        "val/kT_source_kjmol": [KT_SOURCE] * n,
        "val/reconstruction_rmsd_nm": [1.0e-5] * n,
    }
    train = {"train/loss": geometric(9.0, 1.0, n), "train/loss_forward": geometric(8.0, 0.8, n),
             "train/loss_inverse": geometric(9.0, 2.0e11, n)}
    return val, train


LIGAND_VAL_SWINGS = [122.0, 3410.0, 10991.0, 540.0, 8800.0, 230.0, 6100.0, 10991.0, 390.0, 7400.0]
LIGAND_CONNECTIVITY = [0.92, 0.90, 0.88, 0.80, 0.70, 0.55, 0.40, 0.20, 0.05, 0.0]


def ligand_history(collapse: bool, one_sample: bool) -> tuple[dict, dict, dict]:
    """The FiLM fine-tuning run of the issue: train loss 0.605 -> 0.197 over 10 epochs; with
    ``one_sample`` val loss swings 122..10991 (one validation complex); with ``collapse``
    connectivity falls to 0 at epoch 9."""
    train = {"train/loss": geometric(0.605, 0.197, 10)}
    val: dict[str, list[float]] = {
        "val/loss": LIGAND_VAL_SWINGS if one_sample else geometric(0.70, 0.62, 10)}
    if collapse:
        val["val/connectivity"] = LIGAND_CONNECTIVITY
        val["val/validity"] = [0.97, 0.96, 0.97, 0.95, 0.96, 0.95, 0.94, 0.95, 0.93, 0.94]
    hparams = {"n_val": 1 if one_sample else 100, "lr": 1e-4}
    return val, train, hparams
