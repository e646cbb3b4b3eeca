"""The figure of one flow-PT run: ``plots/sampler.png`` (walker ladder, acceptance per pair)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from moltune.flow.pt_sampler.records import STATS_FILE

__all__ = ["plot_sampler"]


def plot_sampler(out_dir: str | Path, path: str | Path) -> None:
    """Walker ladder (temperature of each walker against time) and acceptance per pair (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moltune.common.io import atomic_path
    from moltune.physics.ptdata import load_pt_data

    out = Path(out_dir)
    stats = json.loads((out / STATS_FILE).read_text())
    data = load_pt_data(out)
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    temps = data.temperatures_K
    if data.n_frames:
        idx = np.stack(data.replica_index)  # [K, F] walker at temperature k
        for w in range(len(temps)):
            k_of_w = np.argmax(idx == w, axis=0)
            a0.step(data.time_ps, temps[k_of_w], where="post", lw=0.8, label=f"walker {w}")
    a0.set_xlabel("time / ps")
    a0.set_ylabel("temperature / K")
    a0.set_title(f"walkers ({stats['round_trips']} round trips)")
    a0.legend(fontsize=7, loc="upper right")
    names = list(stats["pairs"])
    acc = [stats["pairs"][n]["acceptance"] for n in names]
    err = [stats["pairs"][n].get("acceptance_se", 0.0) for n in names]
    labels = [f"{stats['pairs'][n]['temperatures_K'][0]:g}-{stats['pairs'][n]['temperatures_K'][1]:g}"
              f"\n{stats['pairs'][n]['swap']}" for n in names]  # fmt: skip
    a1.bar(range(len(names)), acc, yerr=err, color="tab:blue")
    a1.set_xticks(range(len(names)), labels, fontsize=7)
    a1.set_ylim(0, 1)
    a1.set_ylabel("swap acceptance")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
