"""Effective samples per CPU hour of the 300 K slow observables: flow-PT against plain PT.

A short ``moltune pt compare-samplers`` run measures each sampler's CPU cost per ns side by side
(same machine, same moment) and flow-PT's autocorrelation times. Plain PT at 300 K enters the
left-handed region (phi > 0) only a few times per ns, so a CPU-matched plain segment of a few
hundred ps cannot estimate its autocorrelation time. This script takes plain PT's times from
long plain runs of the same ladder (``moltune pt simulate``, independent seeds; the same code
path as ``pt sample`` without a flow) and combines them with plain PT's CPU cost from the
comparison:

    ESS per CPU hour = (ESS per ns of sampling) x (ns per CPU hour)

ESS depends on the frame interval when the autocorrelation time is shorter than it, so only
plain runs saved at the comparison's interval are used. Each is cut into blocks of ``--block-ns``
(far longer than the autocorrelation times), and the plain error is the standard error of ESS per
ns across blocks; flow-PT's error is the Sokal error reported by compare-samplers (an
underestimate with few transitions).

    python benchmarks/flow_pt_efficiency.py --compare runs/compare_aa \\
        --plain data/aa_pt_dense [--flow-runs runs/flowpt_seed6 ...]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from moltune.flow.pt_sampler import observable_series, sampler_statistics
from moltune.physics.ptdata import load_pt_data
from moltune.physics.timeseries import integrated_autocorrelation, n_transitions

OBSERVABLES = ("phi_positive", "psi_alpha", "energy_kjmol")


def plain_blocks(directory: str | Path, block_ns: float, dt_ps: float) -> list[dict[str, dict]]:
    """Per block of ``block_ns`` and observable at the lowest temperature: mean, tau (ps), ESS."""
    data = load_pt_data(directory)
    run_dt = float(data.metadata.get("save_interval_ps", 1.0))
    if not math.isclose(run_dt, dt_ps):
        raise SystemExit(
            f"{directory}: frames every {run_dt} ps, the comparison's every {dt_ps} ps"
        )
    series = observable_series(data.xyz_nm[0], data.md_topology)
    series["energy_kjmol"] = data.energy_kjmol[0]
    n = round(block_ns * 1000.0 / dt_ps)
    blocks = []
    for start in range(0, data.n_frames - n + 1, n):
        b = {}
        for name, s in series.items():
            s = s[start : start + n]
            est = integrated_autocorrelation(s)
            b[name] = {
                "mean": float(s.mean()), "tau_ps": est.tau * dt_ps, "ess": est.ess,
                "ns": block_ns, "ess_per_ns": est.ess / block_ns,
                "transitions": n_transitions(s) if name != "energy_kjmol" else None,
            }  # fmt: skip
        blocks.append(b)
    return blocks


def combine_plain(runs: list[dict[str, dict]]) -> dict[str, dict]:
    """ESS per ns pooled over blocks (total ESS / total ns), standard error across blocks."""
    out = {}
    for name in OBSERVABLES:
        per_run = np.array([r[name]["ess_per_ns"] for r in runs])
        ess, ns = sum(r[name]["ess"] for r in runs), sum(r[name]["ns"] for r in runs)
        se = per_run.std(ddof=1) / math.sqrt(len(runs)) if len(runs) > 1 else math.nan
        means = np.array([r[name]["mean"] for r in runs])
        out[name] = {
            "ess_per_ns": ess / ns, "ess_per_ns_se": float(se), "ns": ns,
            "mean": float(np.average(means, weights=[r[name]["ns"] for r in runs])),
            "mean_se_across_runs": float(means.std(ddof=1) / math.sqrt(len(runs)))
            if len(runs) > 1 else math.nan,
            "per_run_ess_per_ns": per_run.tolist(),
            "transitions": sum(r[name]["transitions"] or 0 for r in runs),
        }  # fmt: skip
    return out


def pool_flow_runs(stats: list[dict], cpu_s_per_ns: float | None = None) -> dict:
    """ESS per CPU hour of several independent flow-PT runs: total ESS over total CPU time.

    ``cpu_s_per_ns`` charges every run that cost instead of its own CPU time (runs made while
    the machine was loaded differently are then compared at one measured price).
    The error is the spread of the per-run rates (standard error) when there are 3+ runs, else
    the per-run Sokal errors added in quadrature; the mean is the ESS-weighted mean.
    """
    obs = {}
    for name in OBSERVABLES:
        runs = [s["observables_T0"][name] for s in stats]
        cpu_h = [
            (s["cpu_s"] if cpu_s_per_ns is None else cpu_s_per_ns * s["production_ps"] / 1000.0)
            / 3600.0
            for s in stats
        ]
        rate = sum(r["ess"] for r in runs) / sum(cpu_h)
        if len(runs) >= 3:
            per_run = [r["ess"] / h for r, h in zip(runs, cpu_h)]
            err = float(np.std(per_run, ddof=1) / math.sqrt(len(runs)))
        else:
            err = math.sqrt(sum(r["ess_error"] ** 2 for r in runs)) / sum(cpu_h)
        w = np.array([r["ess"] for r in runs])
        obs[name] = {
            "ess_per_cpu_hour": rate, "ess_per_cpu_hour_error": err,
            "mean": float(np.average([r["mean"] for r in runs], weights=w)),
            "mean_error": float(1 / math.sqrt(sum(1 / r["mean_error"] ** 2 for r in runs)))
            if all(r["mean_error"] > 0 for r in runs) else math.nan,
        }  # fmt: skip
    return {"observables_T0": obs}


def blocks_as_variant(dirs: list, block_ns: float, dt_ps: float, cpu_s_per_ns: float) -> dict:
    """Flow-PT runs cut into ``block_ns`` blocks like plain PT's; ESS per CPU hour at one price."""
    pooled = combine_plain([b for d in dirs for b in plain_blocks(d, block_ns, dt_ps)])
    per_hour = 3600.0 / cpu_s_per_ns
    obs = {
        name: {
            "ess_per_cpu_hour": p["ess_per_ns"] * per_hour,
            "ess_per_cpu_hour_error": p["ess_per_ns_se"] * per_hour,
            "mean": p["mean"],
            "mean_error": p["mean_se_across_runs"],
        }
        for name, p in pooled.items()
    }
    return {"observables_T0": obs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--compare", required=True, help="moltune pt compare-samplers output folder")
    ap.add_argument("--plain", nargs="+", required=True,
                    help="long plain PT runs (same ladder and frame interval)")  # fmt: skip
    ap.add_argument("--block-ns", type=float, default=0.5, help="block length for the errors")
    ap.add_argument("--flow-runs", nargs="*", default=[],
                    help="further `moltune pt sample --flow` runs (other seeds) of the same flow "
                    "and ladder, pooled with the comparison's flow_pt")  # fmt: skip
    ap.add_argument("--without-compare-flow", action="store_true",
                    help="pool only the --flow-runs (e.g. runs of another flow or velocity mode "
                    "than the comparison's flow_pt)")  # fmt: skip
    ap.add_argument("--cpu-from-compare", action="store_true",
                    help="charge every pooled flow-PT run the comparison's flow_pt CPU per ns "
                    "(measured beside plain PT) instead of its own CPU time; the 'same blocks' row "
                    "always does")  # fmt: skip
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)

    comp = json.loads((Path(args.compare) / "compare.json").read_text())
    variants = comp["variants"]
    if args.flow_runs:
        runs = [sampler_statistics(d) for d in args.flow_runs]
        if not args.without_compare_flow:
            runs.insert(0, variants["flow_pt"])
        price = variants["flow_pt"]["cpu_s_per_ns"] if args.cpu_from_compare else None
        variants["flow_pt (pooled seeds)"] = pool_flow_runs(runs, price)
        # the same estimator on series of the same length as plain PT's blocks: a rare state's
        # Sokal ESS grows as the series shortens (fewer visits, shorter tau), so whole-run
        # figures of short flow-PT runs are not comparable with blocks of a long plain run
        dirs = [Path(args.compare) / "flow_pt", *args.flow_runs]
        dirs = dirs[1:] if args.without_compare_flow else dirs
        variants["flow_pt (same blocks)"] = blocks_as_variant(
            dirs, args.block_ns, float(variants["flow_pt"]["save_interval_ps"]),
            float(variants["flow_pt"]["cpu_s_per_ns"]))
    plain_cpu_s_per_ns = variants["plain_pt"]["cpu_s_per_ns"]
    dt_ps = float(variants["plain_pt"]["save_interval_ps"])
    plain = combine_plain([b for d in args.plain for b in plain_blocks(d, args.block_ns, dt_ps)])
    result: dict = {"plain_cpu_s_per_ns": plain_cpu_s_per_ns, "plain_runs": args.plain,
                    "observables": {}}  # fmt: skip
    print(f"plain PT CPU cost (compare-samplers, same machine): {plain_cpu_s_per_ns:.0f} s per ns")
    print(f"plain PT statistics from {len(args.plain)} long run(s): {plain['phi_positive']['ns']:.1f} "
          f"ns in {args.block_ns:g}-ns blocks, frames every {dt_ps:g} ps")  # fmt: skip
    for name in OBSERVABLES:
        p = plain[name]
        p_rate = p["ess_per_ns"] * 3600.0 / plain_cpu_s_per_ns
        p_err = p["ess_per_ns_se"] * 3600.0 / plain_cpu_s_per_ns
        rows = {"plain_pt (long runs)": (p_rate, p_err, p["mean"], p["mean_se_across_runs"])}
        for v, st in variants.items():
            if v == "plain_pt" or name not in st.get("observables_T0", {}):
                continue
            o = st["observables_T0"][name]
            rows[v] = (o["ess_per_cpu_hour"], o["ess_per_cpu_hour_error"], o["mean"],
                       o["mean_error"])  # fmt: skip
        print(f"\n{name} at {variants['plain_pt']['temperatures_K'][0]:.0f} K")
        print(f"{'sampler':24s} {'ESS / CPU h':>22s} {'ratio to plain':>20s} {'mean':>20s}")
        res = {}
        for v, (rate, err, mean, mean_err) in rows.items():
            ratio = rate / p_rate
            ratio_err = ratio * math.hypot(err / rate if rate else 0, p_err / p_rate)
            print(f"{v:24s} {rate:12.4g} ± {err:<8.2g} {ratio:10.3g} ± {ratio_err:<8.2g} "
                  f"{mean:10.4g} ± {mean_err:<8.2g}")  # fmt: skip
            res[v] = {"ess_per_cpu_hour": rate, "error": err, "ratio_to_plain": ratio,
                      "ratio_error": ratio_err, "mean": mean, "mean_error": mean_err}  # fmt: skip
        result["observables"][name] = res
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
