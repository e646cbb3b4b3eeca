"""PNG figures for diagnosis, overfitting and comparisons (matplotlib, Agg backend).

Series are ``pandas.Series`` indexed by epoch. Non-finite points are drawn as red crosses at the
top edge so a NaN is seen, not silently dropped; the y axis turns symlog when values span many
orders of magnitude (exploding energies).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from moltune.common.io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def _scale(ax, series: Sequence[pd.Series]) -> None:
    vals = np.concatenate([s.to_numpy(dtype=float) for s in series if len(s)] or [np.array([])])
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return
    if np.all(vals > 0) and vals.max() / vals.min() > 50:
        ax.set_yscale("log")
    elif np.abs(vals).max() > 1e4 * max(np.median(np.abs(vals)), 1e-12):
        ax.set_yscale("symlog", linthresh=max(np.median(np.abs(vals)), 1e-12))


def _line(ax, s: pd.Series, label: str, **kw) -> None:
    x = np.asarray(s.index, dtype=float)
    y = s.to_numpy(dtype=float)
    finite = np.isfinite(y)
    ax.plot(x[finite], y[finite], marker="o", ms=3, label=label, **kw)
    if (~finite).any():
        ax.plot(x[~finite], np.zeros((~finite).sum()), "x", color="red", ms=8,
                transform=ax.get_xaxis_transform(), clip_on=False,
                label=f"{label}: non-finite")


def series_plot(panels: dict[str, dict[str, pd.Series]], path: str | Path, title: str = "",
                xlabel: str = "epoch") -> Path:
    """One panel per entry (panel title -> {label: series}); returns the PNG path."""
    plt = _plt()
    n = max(1, len(panels))
    fig, axes = plt.subplots(n, 1, figsize=(7, 2.8 * n), squeeze=False)
    for ax, (name, lines) in zip(axes[:, 0], panels.items()):
        for label, s in lines.items():
            if len(s):
                _line(ax, s, label)
        _scale(ax, list(lines.values()))
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def overfitting_plot(train: pd.Series, val: pd.Series, ratio: pd.Series, threshold: float,
                     first_overfit_epoch: int | None, recommended_epoch: int | None,
                     path: str | Path, xlabel: str = "epoch") -> Path:
    """Train and validation loss with the first-overfit marker, and the val/train ratio."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 5.6), sharex=True)
    _line(ax, train, "train loss")
    _line(ax, val, "validation loss")
    _scale(ax, [train, val])
    _line(ax2, ratio, "val / train")
    ax2.axhline(threshold, color="grey", ls="--", label=f"threshold {threshold:g}")
    for a in (ax, ax2):
        if first_overfit_epoch is not None:
            a.axvline(first_overfit_epoch, color="red", ls="--", label="first overfit")
        if recommended_epoch is not None:
            a.axvline(recommended_epoch, color="green", ls=":", label="recommended checkpoint")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    ax.set_ylabel("loss")
    ax2.set_ylabel("ratio")
    ax2.set_xlabel(xlabel)
    fig.tight_layout()
    return _save(fig, path)


def comparison_plot(groups: dict[str, Sequence[float]], cis: dict[str, tuple[float, float]],
                    metric: str, path: str | Path) -> Path:
    """Per-seed values (dots) with the bootstrap CI of the mean (bar) for each group."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(groups) + 2), 3.6))
    for i, (name, values) in enumerate(groups.items()):
        v = np.asarray(values, dtype=float)
        jitter = np.linspace(-0.12, 0.12, len(v)) if len(v) > 1 else np.zeros(1)
        ax.plot(i + jitter, v, "o", alpha=0.7, color=f"C{i}")
        lo, hi = cis.get(name, (math.nan, math.nan))
        m = float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else math.nan
        if math.isfinite(lo) and math.isfinite(hi):
            # identical seeds give a zero-width interval that rounding may put beside the mean
            ax.errorbar(i + 0.25, m, yerr=[[max(m - lo, 0.0)], [max(hi - m, 0.0)]], fmt="s",
                        color="black", capsize=4)
        else:
            ax.plot(i + 0.25, m, "s", color="black")
    ax.set_xticks(range(len(groups)), list(groups), rotation=20, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: seeds (dots), mean with 95% bootstrap CI (squares)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, path)
