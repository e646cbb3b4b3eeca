"""Genuine small training runs with known pathologies, for the diagnosis tests (CPU, seconds).

Real models (logistic regression / small MLPs) on scikit-learn's bundled data sets (breast
cancer, digits), trained with Lightning and logged through Lightning's own ``CSVLogger`` and
``TensorBoardLogger`` (``lightning_logs/version_0/``) under one of four naming conventions:

- ``moltune``: ``train/loss``, ``val/loss``, ``val/acc``, ``train/grad_norm``
- ``lightning``: ``train_loss`` (on_step and on_epoch: ``train_loss_step`` / ``_epoch``),
  ``val_loss``, ``val_acc``, ``grad_norm``
- ``diffsbdd``: ``loss/train``, ``loss/val``, ``Accuracy/val``, ``grad_norm``
- ``keras``: ``loss``, ``val_loss``, ``accuracy``, ``val_accuracy``

Each :data:`CASES` entry says how the run goes wrong and which finding must come first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NAMES = {
    "moltune": {"train_loss": "train/loss", "val_loss": "val/loss", "train_acc": "train/acc",
                "val_acc": "val/acc", "grad": "train/grad_norm", "test_loss": "test/loss",
                "test_acc": "test/acc", "n_val": "n_val"},
    "lightning": {"train_loss": "train_loss", "val_loss": "val_loss", "train_acc": "train_acc",
                  "val_acc": "val_acc", "grad": "grad_norm", "test_loss": "test_loss",
                  "test_acc": "test_acc", "n_val": "val_set_size"},
    "diffsbdd": {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "Accuracy/train",
                 "val_acc": "Accuracy/val", "grad": "grad_norm", "test_loss": "loss/test",
                 "test_acc": "Accuracy/test", "n_val": "num_val"},
    "keras": {"train_loss": "loss", "val_loss": "val_loss", "train_acc": "accuracy",
              "val_acc": "val_accuracy", "grad": "grad_norm", "test_loss": "test_loss",
              "test_acc": "test_accuracy", "n_val": "n_val_samples"},
}


@dataclass
class Case:
    """One run: data, model, optimiser and what breaks it; ``expect`` is the first finding."""

    expect: str
    naming: str = "moltune"
    data: str = "cancer"  # cancer (binary) or digits (10 classes)
    n_train: int | None = None
    n_val: int | None = None
    hidden: int = 0
    lr: float = 1e-2
    optimizer: str = "adam"
    epochs: int = 25
    batch_size: int = 32
    seed: int = 0
    flip_labels_from_epoch: int | None = None  # a pipeline bug: training labels inverted
    corrupt_steps: tuple[int, ...] = ()  # steps whose batch holds a mislabelled sample x1000
    label_noise: float = 0.0
    clip: float | None = None
    val_every_n_epochs: int = 1
    val_check_interval: float = 1.0
    hparams: dict = field(default_factory=dict)
    test: bool = False
    grad_metric: bool = True


CASES: dict[str, Case] = {
    "healthy": Case("healthy", "moltune"),
    "nan_divergence": Case("nonfinite", "lightning", hidden=32, lr=30.0, optimizer="sgd",
                           epochs=10),
    "overfitting": Case("overfitting", "diffsbdd", data="digits", n_train=80, hidden=256,
                        lr=3e-3, epochs=60, batch_size=16),
    "lr_zero": Case("not_learning", "keras", lr=0.0, epochs=10),
    "lr_too_small": Case("not_learning", "diffsbdd", lr=1e-6, epochs=15),
    "two_sample_validation": Case("small_validation", "lightning", n_val=2, epochs=15),
    "exploding_gradients": Case("gradient_explosion", "moltune", clip=1.0,
                                corrupt_steps=(60, 110, 160), epochs=20),
    "accuracy_collapse": Case("quality_collapse", "diffsbdd", flip_labels_from_epoch=8,
                              epochs=30, lr=3e-2),
    "noisy_but_healthy": Case("healthy", "lightning", n_train=160, batch_size=2, optimizer="sgd",
                              lr=0.02, label_noise=0.15, epochs=8),
    "validation_every_3_epochs": Case("healthy", "keras", val_every_n_epochs=3, epochs=24),
    "several_validations_per_epoch": Case("overfitting", "moltune", data="digits", n_train=80,
                                          hidden=256, lr=3e-3, epochs=25, batch_size=8,
                                          val_check_interval=0.5),
    "val_size_as_fraction": Case("healthy", "lightning", hparams={"val_size": 0.2}),
    "test_metrics_kept_apart": Case("healthy", "keras", test=True, epochs=15),
    "collapse_lightning_names": Case("quality_collapse", "lightning", flip_labels_from_epoch=8,
                                     epochs=30, lr=3e-2),
    "overfitting_keras_names": Case("overfitting", "keras", data="digits", n_train=80, hidden=256,
                                    lr=3e-3, epochs=60, batch_size=16),
}


def _data(case: Case):
    from sklearn.datasets import load_breast_cancer, load_digits

    loader = load_breast_cancer if case.data == "cancer" else load_digits
    x, y = loader(return_X_y=True)
    rng = np.random.default_rng(case.seed)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    n_val = case.n_val or len(y) // 5
    n_test = len(y) // 10
    xv, yv = x[:n_val], y[:n_val]
    xt, yt = x[n_val:n_val + n_test], y[n_val:n_val + n_test]
    xtr, ytr = x[n_val + n_test:], y[n_val + n_test:]
    if case.n_train:
        xtr, ytr = xtr[:case.n_train], ytr[:case.n_train]
    if case.label_noise:
        flip = rng.random(len(ytr)) < case.label_noise
        ytr = np.where(flip, rng.integers(0, y.max() + 1, len(ytr)), ytr)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    as_t = lambda a, b: (torch.tensor((a - mu) / sd, dtype=torch.float32),
                         torch.tensor(b, dtype=torch.long))
    return as_t(xtr, ytr), as_t(xv, yv), as_t(xt, yt), int(y.max() + 1)


class Classifier(L.LightningModule):
    def __init__(self, case: Case):
        super().__init__()
        self.case = case
        self.names = NAMES[case.naming]
        self.train_xy, self.val_xy, self.test_xy, n_classes = _data(case)
        self.n_classes = n_classes
        torch.manual_seed(case.seed)
        d = self.train_xy[0].shape[1]
        self.net = (nn.Linear(d, n_classes) if case.hidden == 0 else nn.Sequential(
            nn.Linear(d, case.hidden), nn.ReLU(), nn.Linear(case.hidden, n_classes)))
        hp = {"lr": case.lr, "batch_size": case.batch_size, "optimizer": case.optimizer}
        if case.n_val is not None:
            hp[self.names["n_val"]] = case.n_val
        self.save_hyperparameters(hp | case.hparams)

    def _step(self, batch, split: str):
        x, y = batch
        if split == "train":
            if self.case.flip_labels_from_epoch is not None and \
                    self.current_epoch >= self.case.flip_labels_from_epoch:
                y = self.n_classes - 1 - y
            if self.global_step in self.case.corrupt_steps:  # a mislabelled outlier sample
                x, y = x.clone(), y.clone()
                x[0] = x[0] * 1000.0
                y[0] = (self.net(x[:1]).argmax(-1)[0] + 1) % self.n_classes
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        return loss, acc

    def training_step(self, batch, batch_idx):
        loss, acc = self._step(batch, "train")
        both = self.case.naming in ("moltune", "lightning")
        self.log(self.names["train_loss"], loss, on_step=both, on_epoch=True)
        self.log(self.names["train_acc"], acc, on_step=False, on_epoch=True)
        return loss

    def on_before_optimizer_step(self, optimizer):
        if self.case.grad_metric:  # before clipping, as the contract asks
            norms = [p.grad.norm() for p in self.parameters() if p.grad is not None]
            self.log(self.names["grad"], torch.stack(norms).norm(), on_step=True, on_epoch=False)

    def validation_step(self, batch, batch_idx):
        loss, acc = self._step(batch, "val")
        self.log(self.names["val_loss"], loss)
        self.log(self.names["val_acc"], acc)

    def test_step(self, batch, batch_idx):
        loss, acc = self._step(batch, "test")
        self.log(self.names["test_loss"], loss)
        self.log(self.names["test_acc"], acc)

    def configure_optimizers(self):
        opt = torch.optim.Adam if self.case.optimizer == "adam" else torch.optim.SGD
        return opt(self.parameters(), lr=self.case.lr)

    def train_dataloader(self):
        return DataLoader(TensorDataset(*self.train_xy), batch_size=self.case.batch_size,
                          shuffle=True, generator=torch.Generator().manual_seed(self.case.seed))

    def val_dataloader(self):
        return DataLoader(TensorDataset(*self.val_xy), batch_size=len(self.val_xy[1]))

    def test_dataloader(self):
        return DataLoader(TensorDataset(*self.test_xy), batch_size=len(self.test_xy[1]))


def train(name: str, root: Path) -> Path:
    """Train case ``name`` under ``root/name`` (``csv/`` and ``tb/`` Lightning log folders)."""
    case = CASES[name]
    run = Path(root) / name
    loggers = [CSVLogger(str(run / "csv")), TensorBoardLogger(str(run / "tb"))]
    trainer = L.Trainer(
        max_epochs=case.epochs, logger=loggers, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
        num_sanity_val_steps=0, accelerator="cpu", devices=1, gradient_clip_val=case.clip,
        check_val_every_n_epoch=case.val_every_n_epochs, val_check_interval=case.val_check_interval,
        default_root_dir=str(run),
    )
    module = Classifier(case)
    trainer.fit(module)
    if case.test:
        trainer.test(module, verbose=False)
    return run
