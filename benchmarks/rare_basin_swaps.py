"""Swap acceptance of the rare basins, from ``moltune pt evaluate`` folders.

    python benchmarks/rare_basin_swaps.py --data DATA EVAL_DIR [EVAL_DIR ...]

For each evaluation (run with its default ``--max-frames``, i.e. all frames of ``--data``) the
held-out pairs (x at T_i, y at T_j) are split by the slow observables of
``moltune.flow.pt_sampler.observable_series``: a *down*-swap carries y (T_j) to T_i, so
"phi > 0 down" is the mean acceptance of the pairs whose T_j frame has phi > 0; "cis down"
likewise. Prints the naive and flow acceptance of every class and how many pairs it holds,
then, as the classes hold few of the evaluation's pairs, the acceptance of every frame of a rare
class against every frame of the other temperature ("all partners"; frames of one visit are
correlated, so the number of visits, not of frames, sets the uncertainty).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _pair_acceptance(arr, a, b, b_i: float, b_j: float) -> tuple[np.ndarray, np.ndarray]:
    """Naive and flow acceptance of the pairs (source frame a, target frame b)."""
    from moltune.flow.swaps import acceptance_probability, log_acceptance_flow, log_acceptance_naive

    u_x, u_y = arr["u_source"][a], arr["u_target"][b]
    naive = acceptance_probability(log_acceptance_naive(u_x, u_y, b_i, b_j))
    flow = acceptance_probability(
        log_acceptance_flow(
            u_x, u_y, arr["u_forward"][a], arr["u_inverse"][b],
            arr["logdet_forward"][a], arr["logdet_inverse"][b], b_i, b_j,
        )
    )  # fmt: skip
    return naive, flow


def _all_partners(arr, b_i, b_j, down: np.ndarray, up: np.ndarray) -> tuple[int, float, float]:
    """Mean acceptance over every (source frame in ``up``, target frame in ``down``) pair."""
    a, b = np.meshgrid(np.flatnonzero(up), np.flatnonzero(down), indexing="ij")
    naive, flow = _pair_acceptance(arr, a.ravel(), b.ravel(), b_i, b_j)
    n = int(down.sum() if up.all() else up.sum())
    return n, float(np.nanmean(naive)), float(np.nanmean(flow))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the held-out PT folder the evaluations used")
    ap.add_argument("evals", nargs="+", help="moltune pt evaluate output folders")
    args = ap.parse_args()

    from moltune.flow.pt_sampler import observable_series
    from moltune.physics.ptdata import load_pt_data
    from moltune.physics.units import beta

    data = load_pt_data(args.data)
    obs_cache: dict[int, dict] = {}
    print(f"{'evaluation':<28} {'class':<16} {'pairs':>6} {'naive':>7} {'flow':>7}")
    for ev in args.evals:
        details = json.loads((Path(ev) / "details.json").read_text())
        arr = np.load(Path(ev) / "per_frame.npz")
        i, j = details["pair"]
        for k in (i, j):
            if k not in obs_cache:
                obs_cache[k] = observable_series(np.asarray(data.xyz_nm[k]), data.md_topology)
        if len(obs_cache[j]["phi_positive"]) != details["n_frames"]["target"]:
            raise SystemExit(f"{ev}: evaluated on a subsample; re-run without --max-frames")
        b_i, b_j = float(beta(details["t_source_K"])), float(beta(details["t_target_K"]))
        a, b = arr["pair_source"], arr["pair_target"]
        naive, flow = _pair_acceptance(arr, a, b, b_i, b_j)
        classes = {
            "all": np.ones(len(a), bool),
            "phi > 0 down": obs_cache[j]["phi_positive"][b] > 0,
            "phi > 0 up": obs_cache[i]["phi_positive"][a] > 0,
            "cis down": obs_cache[j]["cis_peptide"][b] > 0,
            "trans both": (obs_cache[j]["cis_peptide"][b] == 0)
            & (obs_cache[i]["cis_peptide"][a] == 0),
        }
        label = Path(ev).name[-28:]
        for name, m in classes.items():
            if m.sum() == 0:
                print(f"{label:<28} {name:<16} {0:>6} {'-':>7} {'-':>7}")
                continue
            print(
                f"{label:<28} {name:<16} {int(m.sum()):>6} {np.nanmean(naive[m]):>7.3f} "
                f"{np.nanmean(flow[m]):>7.3f}"
            )
        every_i = np.ones(len(obs_cache[i]["phi_positive"]), bool)
        every_j = np.ones(len(obs_cache[j]["phi_positive"]), bool)
        for name, down, up in (
            ("phi > 0 down", obs_cache[j]["phi_positive"] > 0, every_i),
            ("cis down", obs_cache[j]["cis_peptide"] > 0, every_i),
            ("phi > 0 up", every_j, obs_cache[i]["phi_positive"] > 0),
        ):
            if down.any() and up.any():
                n, nv, fl = _all_partners(arr, b_i, b_j, down, up)
                print(f"{label:<28} {name + ' (all)':<16} {n:>6} {nv:>7.3f} {fl:>7.3f}  frames")


if __name__ == "__main__":
    main()
