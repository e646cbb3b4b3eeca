"""Does one flow swap keep a basin's population? A detailed-balance check on equilibrium data.

If x ~ p_i and y ~ p_j are independent equilibrium samples and the swap kernel is exact, the
expected fraction of temperature i's configurations in a region A after one swap equals the
fraction before it. Per pair the expected change (averaged over the Metropolis uniform) is

    alpha(x, y) * (1_A(T^-1(y)) - 1_A(x)),     alpha = min(1, exp D),

and its mean over pairs must be 0 within errors. With the identity flow this is the naive swap
(exact by construction: a control for the data). A is the left-handed region phi > 0 of the
peptide's first residue with a phi angle, the slowest state of AA at 300 K.

Frames of one PT run are correlated (a basin visit lasts picoseconds), so the error comes from
time blocks: both temperatures' frames are cut into ``--blocks`` contiguous blocks, block b of
temperature i is paired with a random block of temperature j, and the standard error is that
of the block means.

    python benchmarks/flow_swap_balance.py --flow RUN|identity --data PTDIR [PTDIR ...] \\
        [--pair 0 1] [--pairs-per-block 250] [--blocks 20]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from moltune.flow.pt_sampler.analysis import observable_series
from moltune.flow.rebuild import load_sampler_flow
from moltune.flow.swaps import propose_flow_swap
from moltune.physics.energy import TorchEnergy
from moltune.physics.ptdata import load_pt_data
from moltune.physics.units import beta


def block_changes(flow, data, i: int, j: int, n_blocks: int, per_block: int, seed: int):
    """Per block: mean expected change of 1_A at T_i and at T_j, and the mean acceptance."""
    rng = np.random.default_rng(seed)
    t_i, t_j = float(data.temperatures_K[i]), float(data.temperatures_K[j])
    energy = TorchEnergy.from_topology(data.topology).double()
    xs, ys = np.array_split(np.arange(len(data.xyz_nm[i])), n_blocks), np.array_split(
        np.arange(len(data.xyz_nm[j])), n_blocks
    )
    partner = rng.permutation(n_blocks)
    rows = []
    for b in range(n_blocks):
        ix = rng.choice(xs[b], per_block)
        iy = rng.choice(ys[partner[b]], per_block)
        x = torch.as_tensor(data.xyz_nm[i][ix])
        y = torch.as_tensor(data.xyz_nm[j][iy])
        n = len(ix)
        with torch.no_grad():
            p = propose_flow_swap(flow, energy, x, y, torch.full((n,), t_i, dtype=torch.float64),
                                  torch.full((n,), t_j, dtype=torch.float64), beta(t_i), beta(t_j))  # fmt: skip
        acc = np.minimum(1.0, np.exp(np.asarray(p.log_alpha)))
        ind = lambda z: observable_series(np.asarray(z), data.md_topology)["phi_positive"]
        rows.append([
            float(np.mean(acc * (ind(p.x_to_i) - ind(x)))),
            float(np.mean(acc * (ind(p.y_to_j) - ind(y)))),
            float(np.mean(ind(x))), float(np.mean(ind(y))), float(acc.mean()),
        ])  # fmt: skip
    return np.asarray(rows), (t_i, t_j)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flow", required=True, help="flow run / checkpoint, or 'identity'")
    ap.add_argument("--data", nargs="+", required=True, help="PT folders (each checked alone)")
    ap.add_argument("--pair", type=int, nargs=2, default=(0, 1))
    ap.add_argument("--blocks", type=int, default=20)
    ap.add_argument("--pairs-per-block", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    flow = load_sampler_flow(args.flow)[0].double().eval()
    print(f"flow: {args.flow}")
    print("| data | T | P(phi>0) before | expected change after one swap | z | acceptance |")
    print("|---|---|---|---|---|---|")
    for d in args.data:
        data = load_pt_data(d)
        rows, temps = block_changes(flow, data, *args.pair, args.blocks, args.pairs_per_block,
                                    args.seed)  # fmt: skip
        for col, t in enumerate(temps):
            m, se = rows[:, col].mean(), rows[:, col].std(ddof=1) / np.sqrt(len(rows))
            print(f"| {d} | {t:g} K | {rows[:, 2 + col].mean():.4f} | {m:+.5f} ± {se:.5f} | "
                  f"{m / se if se > 0 else float('nan'):+.2f} | {rows[:, 4].mean():.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
