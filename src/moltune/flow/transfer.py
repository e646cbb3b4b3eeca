"""Transfer table: naive vs flow swap acceptance per temperature pair for several peptides.

``moltune pt transfer`` evaluates one flow (``moltune.flow.rebuild.run_flow_factory``) zero-shot
on the PT data of each peptide through ``moltune.flow.evaluate.evaluate_transport``.
"""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["render_transfer", "transfer_table"]


def transfer_table(
    flow_factory,
    data_dirs: dict[str, str | Path],
    pairs: list[tuple[int, int]] | None = None,
    n_pairs: int = 2000,
    n_boot: int = 200,
    seed: int = 0,
    progress: bool = False,
) -> list[dict]:
    """Naive vs flow swap acceptance for each pair of each peptide (issue 4, transfer), one table.

    ``flow_factory(topology, xyz_nm_by_temperature) -> flow`` gives the flow for a peptide (for a
    transferable model: the same weights on that peptide's atoms; zero-shot means it was not
    trained on it). ``data_dirs`` maps a peptide name to its PT folder (held-out frames).
    ``pairs`` are ladder index pairs (default: neighbours and the full skip 0 <-> K-1). Each
    acceptance comes from ``moltune.flow.evaluate.evaluate_transport`` (mean and block-bootstrap
    95% interval over ``n_pairs`` pairs of frames).
    """
    from moltune.flow.evaluate import evaluate_transport
    from moltune.physics.energy import TorchEnergy
    from moltune.physics.ptdata import load_pt_data

    rows = []
    for name, d in data_dirs.items():
        data = load_pt_data(d)
        temps = [float(t) for t in data.temperatures_K]
        k = len(temps)
        todo = pairs or [(i, i + 1) for i in range(k - 1)] + ([(0, k - 1)] if k > 2 else [])
        energy = TorchEnergy.from_topology(
            data.topology, solvent=data.metadata.get("solvent", "obc2")
        ).double()
        flow = flow_factory(data.topology, data.xyz_nm)
        for i, j in todo:
            metrics, _, _ = evaluate_transport(
                flow, energy.energy, data.xyz_nm[i], data.xyz_nm[j], temps[i], temps[j],
                n_pairs=n_pairs, n_boot=n_boot, n_roundtrip=8, seed=seed, progress=progress,
            )  # fmt: skip
            rows.append({
                "peptide": name,
                "pair": [i, j],
                "temperatures_K": [temps[i], temps[j]],
                "acceptance_naive": metrics["acceptance_naive"],
                "acceptance_flow": metrics["acceptance_flow"],
                "nonfinite_fraction": metrics["nonfinite_fraction"],
                "frames": [len(data.xyz_nm[i]), len(data.xyz_nm[j])],
            })  # fmt: skip
    return rows


def render_transfer(rows: list[dict], title: str = "Swap acceptance: naive vs flow") -> str:
    """Markdown table of :func:`transfer_table` rows (mean [95% interval])."""

    def fmt(a: dict) -> str:
        lo, hi = a.get("ci95", [math.nan, math.nan])
        return f"{a['mean']:.3f} [{lo:.3f}, {hi:.3f}]"

    lines = [f"# {title}", "", "| peptide | pair / K | naive | flow | non-finite |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        t = r["temperatures_K"]
        lines.append(f"| {r['peptide']} | {t[0]:g}-{t[1]:g} | {fmt(r['acceptance_naive'])} | "
                     f"{fmt(r['acceptance_flow'])} | {r['nonfinite_fraction']:.3g} |")  # fmt: skip
    return "\n".join(lines) + "\n"
