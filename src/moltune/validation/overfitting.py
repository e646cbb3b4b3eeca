"""Overfitting: the first evaluation where validation loss pulls away from training loss.

Rule: per epoch, ``ratio = val_loss / train_loss`` (train loss: the epoch's aggregate). The first
epoch with ``ratio > threshold`` is ``first_overfit_epoch``; the recommended checkpoint is the
evaluation just before it. When the ratio never passes the threshold, the recommendation is the
epoch of lowest validation loss. Losses that are not all positive (e.g. negative log-likelihoods)
make a ratio meaningless; then the rule uses the difference ``val_loss - train_loss`` (mode
``difference``; the threshold is then in loss units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moltune.common.errors import InvalidInputError
from moltune.validation import logs
from moltune.validation.serialize import write_strict_json

DEFAULT_THRESHOLD = 1.5


@dataclass
class OverfitResult:
    threshold: float
    mode: str  # "ratio" or "difference"
    epochs: list[int]
    train: list[float]
    val: list[float]
    ratio: list[float]
    first_overfit_epoch: int | None
    recommended_epoch: int | None
    best_val_epoch: int | None
    recommended_checkpoint: str | None = None
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "first_overfit_epoch": self.first_overfit_epoch,
            "recommended_epoch": self.recommended_epoch,
            "recommended_checkpoint": self.recommended_checkpoint,
            "best_val_epoch": self.best_val_epoch,
            "threshold": self.threshold,
            "mode": self.mode,
            "message": self.message,
            "ratio_series": [{"epoch": e, "train": t, "val": v, "ratio": r}
                             for e, t, v, r in zip(self.epochs, self.train, self.val, self.ratio)],
        }


def aligned_losses(tidy: pd.DataFrame, train_metric: str = "train/loss",
                   val_metric: str = "val/loss") -> tuple[pd.Series, pd.Series]:
    """Per-epoch train and validation loss on the epochs where validation ran."""
    train = logs.epoch_series(tidy, train_metric)
    val = logs.epoch_series(tidy, val_metric)
    common = val.index.intersection(train.index)
    return train.loc[common].astype(float), val.loc[common].astype(float)


def detect_overfitting(tidy: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD,
                       train_metric: str = "train/loss", val_metric: str = "val/loss",
                       mode: str = "auto", checkpoints: list[Path] | None = None) -> OverfitResult:
    """Apply the rule above to a tidy metrics table (see :mod:`moltune.validation.logs`)."""
    train, val = aligned_losses(tidy, train_metric, val_metric)
    if len(val) == 0:
        raise InvalidInputError(
            f"no epoch has both {train_metric!r} and {val_metric!r}; logged metrics: "
            f"{', '.join(sorted(tidy['metric'].unique())) or 'none'}"
        )
    finite = np.isfinite(train.to_numpy()) & np.isfinite(val.to_numpy())
    if mode == "auto":
        positive = (train.to_numpy()[finite] > 0).all() and (val.to_numpy()[finite] > 0).all()
        mode = "ratio" if positive else "difference"
    if mode == "ratio":
        ratio = val / train
    elif mode == "difference":
        ratio = val - train
    else:
        raise InvalidInputError(f"unknown mode {mode!r}; use auto, ratio or difference")
    epochs = [int(e) for e in val.index]
    first = next((e for e, r in zip(epochs, ratio.to_numpy()) if math.isfinite(r) and r > threshold),
                 None)
    vals = val.to_numpy()
    best = epochs[int(np.nanargmin(np.where(np.isfinite(vals), vals, np.nan)))] if finite.any() else None
    if first is None:
        recommended = best
        message = (f"validation/train {'ratio' if mode == 'ratio' else 'difference'} never passed "
                   f"{threshold:g}; recommended: lowest validation loss (epoch {best})")
    else:
        earlier = [e for e, v in zip(epochs, vals) if e < first and math.isfinite(v)]
        recommended = earlier[-1] if earlier else None
        message = (f"first evaluation past the threshold: epoch {first}; "
                   + (f"use the checkpoint of epoch {recommended}" if recommended is not None
                      else "already past it at the first evaluation; no earlier checkpoint"))
    ckpt = None
    if recommended is not None and checkpoints:
        matches = [p for p in checkpoints if logs.checkpoint_epoch(p) == recommended]
        ckpt = str(matches[-1]) if matches else None
    return OverfitResult(threshold, mode, epochs, [float(x) for x in train], [float(x) for x in val],
                         [float(x) for x in ratio], first, recommended, best, ckpt, message)


def run_overfitting(path: str | Path, threshold: float = DEFAULT_THRESHOLD, out: str | Path | None = None,
                    train_metric: str = "train/loss", val_metric: str = "val/loss", mode: str = "auto",
                    wandb_run: str | None = None) -> tuple[OverfitResult, Path]:
    """Read a run folder or log file, detect overfitting, write overfitting.json and a plot."""
    from moltune.validation.plots import overfitting_plot

    path = Path(path)
    run = logs.load_run(path, wandb_run)
    result = detect_overfitting(run.metrics, threshold, train_metric, val_metric, mode, run.checkpoints)
    out_dir = Path(out) if out is not None else run.path
    plot = overfitting_plot(
        pd.Series(result.train, index=result.epochs), pd.Series(result.val, index=result.epochs),
        pd.Series(result.ratio, index=result.epochs), threshold, result.first_overfit_epoch,
        result.recommended_epoch, out_dir / "plots" / "overfitting.png")
    data = result.as_dict() | {"run": str(run.path), "log": str(run.log_path),
                               "plot": str(plot.relative_to(out_dir))}
    write_strict_json(out_dir / "overfitting.json", data)
    return result, out_dir / "overfitting.json"
