"""Figures for peptide samples: Ramachandran free-energy maps and energy histograms (PNG, Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moltune.common.io import atomic_path

FREE_ENERGY_MAX_KT = 8.0


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def free_energy_2d(phi: np.ndarray, psi: np.ndarray, bins: int = 60) -> np.ndarray:
    """-ln p of a 2D histogram over [-pi, pi]^2 in kT, shifted so its minimum is 0 (NaN if empty).

    Returned as [bins(psi), bins(phi)] (rows psi, columns phi, ready for imshow).
    """
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    h, _, _ = np.histogram2d(np.ravel(psi), np.ravel(phi), bins=[edges, edges], density=True)
    with np.errstate(divide="ignore"):
        f = -np.log(h)
    f[~np.isfinite(f)] = np.nan
    if np.isfinite(f).any():
        f -= np.nanmin(f)
    return f


def ramachandran(
    panels: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, bins: int | None = None
) -> Path:
    """One Ramachandran panel per sample set: free energy -ln p(phi, psi) in kT (angles in rad).

    ``bins`` per axis defaults to 20-60 depending on the smallest sample set.
    """
    if bins is None:
        n_min = min((np.size(phi) for phi, _ in panels.values()), default=0)
        bins = int(np.clip(np.sqrt(n_min) / 2, 20, 60))
    plt = _pyplot()
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 0.8, 3.6), squeeze=False)
    image = None
    for ax, (name, (phi, psi)) in zip(axes[0], panels.items()):
        f = free_energy_2d(phi, psi, bins)
        image = ax.imshow(
            f, origin="lower", extent=(-np.pi, np.pi, -np.pi, np.pi), cmap="viridis",
            vmin=0.0, vmax=FREE_ENERGY_MAX_KT, interpolation="nearest", aspect="equal",
        )  # fmt: skip
        ax.set_title(f"{name} (n={np.size(phi)})", fontsize=9)
        ax.set_xlabel("phi / rad")
        ax.set_xticks([-np.pi, 0, np.pi], ["-π", "0", "π"])
        ax.set_yticks([-np.pi, 0, np.pi], ["-π", "0", "π"])
    axes[0][0].set_ylabel("psi / rad")
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), label="free energy / kT", shrink=0.85)
    return _save(fig, path)


def energy_histograms(
    sets: dict[str, np.ndarray], path: str | Path, bins: int = 60, xlabel: str = "U / (kJ/mol)"
) -> Path:
    """Overlaid normalised histograms of potential energies (kJ/mol), one per sample set."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    finite = [np.asarray(u, float)[np.isfinite(u)] for u in sets.values()]
    allu = np.concatenate(finite) if finite else np.zeros(0)
    edges = np.linspace(allu.min(), allu.max(), bins + 1) if allu.size > 1 else bins
    for (name, _), u in zip(sets.items(), finite):
        if u.size:
            ax.hist(u, bins=edges, density=True, histtype="stepfilled", alpha=0.45,
                    label=f"{name} (mean {u.mean():.1f}, std {u.std():.1f})")  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return _save(fig, path)
