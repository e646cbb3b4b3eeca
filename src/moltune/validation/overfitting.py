"""Overfitting: the first evaluation where validation loss pulls away from training loss.

Rule: at each evaluation, ``ratio = val_loss / train_loss`` (train loss: the epoch's aggregate,
or its mean since the previous evaluation when validation runs every N steps). Overfitting
starts at the first evaluation after the lowest validation loss whose ratio exceeds
``threshold`` and whose validation loss lies more than ``min_rise`` (relative, 1%) above that
best (while validation still improves, or wobbles by a fraction of a percent, a gap is not
overfitting): ``first_overfit_epoch`` (``first_overfit_step`` its step). The recommended
checkpoint is always the evaluation of lowest validation loss. Losses that are not all positive (e.g. negative log-likelihoods)
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
    unit: str = "epoch"  # evaluations are per epoch, or every N steps
    steps: list[int | None] = field(default_factory=list)
    first_overfit_step: int | None = None
    recommended_step: int | None = None

    @property
    def index(self) -> list:
        """The x axis: epochs, or steps when validation ran several times per epoch."""
        return self.steps if self.unit == "step" else self.epochs

    def as_dict(self) -> dict[str, Any]:
        return {
            "first_overfit_epoch": self.first_overfit_epoch,
            "recommended_epoch": self.recommended_epoch,
            "first_overfit_step": self.first_overfit_step,
            "recommended_step": self.recommended_step,
            "recommended_checkpoint": self.recommended_checkpoint,
            "best_val_epoch": self.best_val_epoch,
            "threshold": self.threshold,
            "mode": self.mode,
            "unit": self.unit,
            "message": self.message,
            "ratio_series": [{"epoch": e, "step": s, "train": t, "val": v, "ratio": r}
                             for e, s, t, v, r in zip(self.epochs, self.steps, self.train, self.val,
                                                      self.ratio)],
        }


def aligned_losses(tidy: pd.DataFrame, train_metric: str = "train/loss",
                   val_metric: str = "val/loss", unit: str | None = None
                   ) -> tuple[pd.Series, pd.Series]:
    """Train and validation loss at each evaluation (per epoch, or per evaluation step with the
    training loss averaged since the previous evaluation; see ``logs.timeline``)."""
    unit = unit or logs.timeline(tidy)
    train = logs.series(tidy, train_metric, unit)
    val = logs.series(tidy, val_metric, unit)
    common = val.index.intersection(train.index)
    return train.loc[common].astype(float), val.loc[common].astype(float)


def detect_overfitting(tidy: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD,
                       train_metric: str = "train/loss", val_metric: str = "val/loss",
                       mode: str = "auto", checkpoints: list[Path] | None = None,
                       min_rise: float = 0.01) -> OverfitResult:
    """Apply the rule above to a tidy metrics table (see :mod:`moltune.validation.logs`)."""
    unit = logs.timeline(tidy)
    train, val = aligned_losses(tidy, train_metric, val_metric, unit)
    if not math.isfinite(threshold):
        raise InvalidInputError(f"threshold {threshold}: must be a finite number")
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
    at = logs.evaluation_index(tidy, unit, val.index)
    epochs = [None if pd.isna(e) else int(e) for e in at["epoch"]]
    steps = [None if pd.isna(s) else int(s) for s in at["step"]]
    keys = [int(i) for i in val.index]  # epochs or steps, as ``unit`` says
    vals = val.to_numpy()
    fin_val = np.isfinite(vals)
    best_pos = int(np.nanargmin(np.where(fin_val, vals, np.nan))) if fin_val.any() else None
    pos = None
    if best_pos is not None:
        best = vals[best_pos]
        pos = next((i for i, r in enumerate(ratio.to_numpy()) if i > best_pos and math.isfinite(r)
                    and r > threshold and vals[i] - best > min_rise * max(abs(best), 1e-12)), None)
    if pos is None:
        rec_pos = best_pos
        message = (f"validation/train {'ratio' if mode == 'ratio' else 'difference'} never passed "
                   f"{threshold:g}; recommended: lowest validation loss ({unit} "
                   f"{keys[best_pos] if best_pos is not None else None})")
    else:
        rec_pos = best_pos
        message = (f"overfitting from {unit} {keys[pos]} (validation loss {vals[pos]:.4g}, "
                   f"{mode} {ratio.iloc[pos]:.3g}); use the checkpoint of lowest validation loss, "
                   f"{unit} {keys[rec_pos]}")

    def pick(lst, i):
        return None if i is None else lst[i]

    ckpt = None
    if rec_pos is not None and checkpoints:
        if unit == "step":
            matches = [p for p in checkpoints if logs.checkpoint_step(p) == steps[rec_pos]]
        else:
            matches = [p for p in checkpoints if logs.checkpoint_epoch(p) == epochs[rec_pos]]
        ckpt = str(matches[-1]) if matches else None
    return OverfitResult(threshold, mode, epochs, [float(x) for x in train], [float(x) for x in val],
                         [float(x) for x in ratio], pick(epochs, pos), pick(epochs, rec_pos),
                         pick(epochs, best_pos), ckpt, message, unit=unit, steps=steps,
                         first_overfit_step=pick(steps, pos), recommended_step=pick(steps, rec_pos))


def run_overfitting(path: str | Path, threshold: float = DEFAULT_THRESHOLD, out: str | Path | None = None,
                    train_metric: str | None = None, val_metric: str | None = None,
                    mode: str = "auto", wandb_run: str | None = None,
                    metrics: dict[str, str] | None = None) -> tuple[OverfitResult, Path]:
    """Read a run folder or log file, detect overfitting, write overfitting.json and a plot.

    The losses are the log's columns resolved to the train / validation loss roles
    (:mod:`moltune.validation.metrics`); ``train_metric`` / ``val_metric`` or ``metrics``
    ({contract name: column}) name them explicitly."""
    from moltune.validation import metrics as mn
    from moltune.validation.plots import overfitting_plot

    path = Path(path)
    overrides = dict(metrics or {})
    if train_metric:
        overrides[mn.TRAIN_LOSS] = train_metric
    if val_metric:
        overrides[mn.VAL_LOSS] = val_metric
    run = logs.load_run(path, wandb_run, overrides)
    res = run.resolution
    if not logs.has_metric(run.metrics, mn.VAL_LOSS) or not logs.has_metric(run.metrics,
                                                                              mn.TRAIN_LOSS):
        hint = (f"; validation-looking columns not assigned: {', '.join(res.unassigned_validation)}"
                if res.unassigned_validation else "")
        raise InvalidInputError(
            f"{path}: no column for the {'validation' if not logs.has_metric(run.metrics, mn.VAL_LOSS) else 'training'}"
            f" loss; logged: {', '.join(sorted(set(res.rename) | set(res.unused)))}{hint}; name it "
            "with --val-metric / --train-metric or --metric val_loss=COLUMN")
    result = detect_overfitting(run.metrics, threshold, mode=mode, checkpoints=run.checkpoints)
    out_dir = Path(out) if out is not None else run.path
    x = result.index
    step_unit = result.unit == "step"
    plot = overfitting_plot(
        pd.Series(result.train, index=x), pd.Series(result.val, index=x),
        pd.Series(result.ratio, index=x), threshold,
        result.first_overfit_step if step_unit else result.first_overfit_epoch,
        result.recommended_step if step_unit else result.recommended_epoch,
        out_dir / "plots" / "overfitting.png", xlabel=result.unit)
    data = result.as_dict() | {"run": str(run.path), "log": str(run.log_path),
                               "plot": str(plot.relative_to(out_dir)),
                               "columns": {"train_loss": res.roles.get("train_loss"),
                                           "val_loss": res.roles.get("val_loss")},
                               "roles": res.roles, "unused_columns": res.unused}
    write_strict_json(out_dir / "overfitting.json", data)
    return result, out_dir / "overfitting.json"
