"""Swap acceptance of the rare basins, from ``moltune pt evaluate`` folders.

    python benchmarks/rare_basin_swaps.py --data DATA EVAL_DIR [EVAL_DIR ...]

For each evaluation (run with its default ``--max-frames``, i.e. all frames of ``--data``) the
held-out pairs (x at T_i, y at T_j) are split by the slow observables of
``moltune.flow.pt_sampler.observable_series``: a *down*-swap carries y (T_j) to T_i, so
"phi > 0 down" is the mean acceptance of the pairs whose T_j frame has phi > 0; "cis down"
likewise. Prints the naive and flow acceptance of every class and how many pairs it holds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the held-out PT folder the evaluations used")
    ap.add_argument("evals", nargs="+", help="moltune pt evaluate output folders")
    args = ap.parse_args()

    from moltune.flow.pt_sampler import observable_series
    from moltune.flow.swaps import (
        acceptance_probability,
        log_acceptance_flow,
        log_acceptance_naive,
    )
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
        naive = acceptance_probability(
            log_acceptance_naive(arr["u_source"][a], arr["u_target"][b], b_i, b_j)
        )
        flow = acceptance_probability(
            log_acceptance_flow(
                arr["u_source"][a], arr["u_target"][b], arr["u_forward"][a],
                arr["u_inverse"][b], arr["logdet_forward"][a], arr["logdet_inverse"][b], b_i, b_j,
            )
        )  # fmt: skip
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


if __name__ == "__main__":
    main()
