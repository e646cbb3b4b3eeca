"""Parallel tempering of AA vs the reference figures of issue 2 (Amber14 + OBC2, 1 fs, 1/ps).

Runs (or resumes) a PT simulation at 300/450/670/1000 K, or analyses an existing PT directory,
and prints per temperature the mean and std of U with block-averaging standard errors, and per
neighbouring pair the observed swap acceptance and the energy-overlap (naive) estimate, each
with an agreement verdict against the reference (|difference| <= 2 combined standard errors; the
reference values carry their rounding as an error: 0.5 kJ/mol, 0.005 in acceptance).

    python benchmarks/pt_reference.py --time-ns 1 --out /work/data/aa_pt_1ns
    python benchmarks/pt_reference.py --data /work/data/aa_pt_1ns      # analyse only
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from moltune.physics.ptdata import block_standard_error, energy_statistics, load_pt_data

TEMPS = [300.0, 450.0, 670.0, 1000.0]
REF_U = {
    300.0: (-508.0, 15.0),
    450.0: (-467.0, 21.0),
    670.0: (-408.0, 32.0),
    1000.0: (-322.0, 47.0),
}
REF_ACC = [0.10, 0.11, 0.12]
REF_ROUND_U, REF_ROUND_STD, REF_ROUND_ACC = 0.5, 0.5, 0.005


def std_standard_error(u: np.ndarray, n_blocks: int = 20) -> float:
    """Block SE of the standard deviation (via the block SE of the squared deviations)."""
    dev2 = (u - u.mean()) ** 2
    return block_standard_error(dev2, n_blocks) / (2.0 * math.sqrt(dev2.mean()))


def verdict(diff: float, se: float, ref_err: float) -> tuple[str, float]:
    z = abs(diff) / math.sqrt(se**2 + ref_err**2)
    return ("agrees" if z <= 2.0 else "DIFFERS"), z


def analyse(directory: str, n_blocks: int = 20) -> dict:
    data = load_pt_data(directory)
    stats = energy_statistics(data, n_blocks)
    meta = data.metadata
    print(f"PT data: {directory}  ({data.n_frames} frames per temperature, "
          f"{data.time_ps[-1] if data.n_frames else 0:g} ps per replica, "
          f"save {meta['save_interval_ps']} ps, swap {meta['swap_interval_ps']} ps, "
          f"seed {meta['seed']}, {meta['solvent']})")  # fmt: skip
    print("\nPotential energy per temperature (kJ/mol); errors are block-averaging standard errors")
    print(f"{'T/K':>6} {'mean U':>16} {'ref':>6} {'z':>5} {'verdict':>8} | "
          f"{'std U':>13} {'ref':>5} {'z':>5} {'verdict':>8}")  # fmt: skip
    rows, ok = [], True
    for t, u, s in zip(data.temperatures_K, data.energy_kjmol, stats["temperatures"]):
        ref_mean, ref_std = REF_U.get(float(t), (float("nan"), float("nan")))
        sd_se = std_standard_error(u, n_blocks)
        v1, z1 = verdict(s["mean_kjmol"] - ref_mean, s["mean_se_kjmol"], REF_ROUND_U)
        v2, z2 = verdict(s["std_kjmol"] - ref_std, sd_se, REF_ROUND_STD)
        ok &= v1 == "agrees" and v2 == "agrees"
        print(f"{t:6.0f} {s['mean_kjmol']:9.1f} ± {s['mean_se_kjmol']:4.1f} {ref_mean:6.0f} "
              f"{z1:5.1f} {v1:>8} | {s['std_kjmol']:6.1f} ± {sd_se:4.1f} {ref_std:5.0f} "
              f"{z2:5.1f} {v2:>8}")  # fmt: skip
        rows.append({**s, "std_se_kjmol": sd_se, "ref_mean": ref_mean, "ref_std": ref_std,
                     "z_mean": z1, "z_std": z2})  # fmt: skip
    print("\nSwap acceptance per neighbouring pair")
    print(f"{'pair/K':>10} {'observed (PT)':>16} {'overlap estimate':>18} {'ref':>5} "
          f"{'z obs':>6} {'z ovl':>6} {'verdict':>8}")  # fmt: skip
    for p, ref in zip(stats["pairs"], REF_ACC):
        a, b = p["pair_K"]
        vo, zo = verdict(p["observed_acceptance"] - ref, p["observed_acceptance_se"], REF_ROUND_ACC)
        vn, zn = verdict(p["overlap_acceptance"] - ref, p["overlap_acceptance_se"], REF_ROUND_ACC)
        both = "agrees" if vo == vn == "agrees" else "DIFFERS"
        ok &= both == "agrees"
        print(f"{a:4.0f}-{b:<5.0f} {p['observed_acceptance']:7.3f} ± {p['observed_acceptance_se']:5.3f}"
              f" {p['overlap_acceptance']:9.3f} ± {p['overlap_acceptance_se']:5.3f} {ref:5.2f} "
              f"{zo:6.1f} {zn:6.1f} {both:>8}")  # fmt: skip
    if "overlap_acceptance_lowest_highest" in stats:
        print(f"{'300-1000':>10} overlap estimate {stats['overlap_acceptance_lowest_highest']:.2e}"
              " (reference: about 0)")  # fmt: skip
    speed = meta.get("last_segment_speed") or {}
    if speed.get("steps_per_s_per_replica"):
        k = len(data.temperatures_K)
        print(f"\nSpeed (last segment of the run): {speed['steps_per_s_per_replica']:.0f} steps/s "
              f"per replica ({k * speed['steps_per_s_per_replica']:.0f} steps/s for {k} replicas), "
              f"{speed['ns_per_day_per_replica']:.0f} ns/day per replica")  # fmt: skip
    if speed.get("replica_steps_per_cpu_s"):
        print(f"CPU cost: {speed['replica_steps_per_cpu_s']:.0f} replica-steps per CPU second "
              f"({speed['replica_steps_per_cpu_s'] * 86400 / 1e6:.0f} ns/day of one replica on "
              "one fully available core)")  # fmt: skip
    print("\nOverall:", "all figures agree with the reference" if ok else "SOME FIGURES DIFFER")
    return {"temperatures": rows, "pairs": stats["pairs"], "agree": ok}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", help="analyse this existing PT directory (no simulation)")
    ap.add_argument("--out", default="runs/pt_reference", help="PT directory to run/resume into")
    ap.add_argument("--time-ns", type=float, default=1.0, help="production ns per replica")
    ap.add_argument("--save-interval-ps", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--blocks", type=int, default=20, help="blocks for the standard errors")
    ap.add_argument("--json", help="also write the table as JSON here")
    args = ap.parse_args(argv)
    directory = args.data
    if directory is None:
        from moltune.physics.replica_exchange import PTConfig, simulate

        cfg = PTConfig(temperatures_K=TEMPS, time_ns=args.time_ns, seed=args.seed,
                       save_interval_ps=args.save_interval_ps, workers=args.workers)  # fmt: skip
        directory = simulate("AA", args.out, cfg)["out"]
    result = analyse(directory, args.blocks)
    if args.json:
        from moltune.common.io import write_json

        write_json(args.json, result)
    return 0 if result["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
