"""Effective samples per CPU hour of the 300 K slow observables: flow-PT against plain PT.

    ESS per CPU hour = (ESS per ns of sampling) x (ns per CPU hour)

**Price** (ns per CPU hour) of each sampler: a ``moltune pt compare-samplers`` run, which times
plain PT and flow-PT side by side (same machine, same moment; the flow, its energies and the
velocity draw are counted in flow-PT's CPU).

**ESS per ns**: batch means (``moltune.physics.timeseries.batch_means``) over several
independent runs of each sampler at the same ladder, pooled: plain runs from ``moltune pt
simulate`` (the same code path as ``pt sample`` without a flow), flow-PT runs from ``pt sample
--flow`` with one flow. Batch means, not Sokal's window: plain PT visits the left-handed region
(phi > 0, 1% at 300 K) about 15 times per ns, and the windowed estimate on runs with few visits
comes out several times too large, by a different factor for each sampler. Batches must be far
longer than tau (5-10 ps for phi > 0 at the top of the ladder), so the ratio is printed for
several batch lengths: it should not drift with them.

Runs must be independent: two runs with the same seed (a run and its own extension, say) are
refused.

    python benchmarks/flow_pt_efficiency.py --compare runs/compare_aa \\
        --plain data/aa_pt_dense data/aa_pt_train data/aa_pt_test \\
        --flow-runs runs/flowpt_s41 runs/flowpt_s42 [--batch-ps 50] [--out eff.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from moltune.flow.pt_sampler.analysis import BATCH_PS, observable_series
from moltune.physics.ptdata import load_pt_data
from moltune.physics.timeseries import batch_means

OBSERVABLES = ("phi_positive", "psi_alpha", "cis_peptide", "energy_kjmol")
BATCH_LENGTHS_PS = (25.0, 50.0, 100.0, 200.0)


def lowest_temperature_series(directory: str | Path) -> dict:
    """The observables at the lowest temperature of one run, its frame interval and seed."""
    data = load_pt_data(directory)
    series = observable_series(data.xyz_nm[0], data.md_topology)
    series["energy_kjmol"] = np.asarray(data.energy_kjmol[0], dtype=np.float64)
    return {
        "dir": str(directory), "series": series, "n_frames": data.n_frames,
        "dt_ps": float(data.metadata.get("save_interval_ps", 1.0)),
        "seed": data.metadata.get("seed"),
        "ladder": tuple(float(t) for t in data.temperatures_K),
    }  # fmt: skip


def check_independent(runs: list[dict]) -> None:
    """Refuse a set of runs that share a seed or a ladder (not independent / not comparable)."""
    seen: dict = {}
    for r in runs:
        if r["ladder"] != runs[0]["ladder"]:
            raise SystemExit(f"{r['dir']}: ladder {r['ladder']} differs from {runs[0]['ladder']}")
        if r["seed"] is not None and r["seed"] in seen:
            raise SystemExit(f"{r['dir']} and {seen[r['seed']]} share seed {r['seed']}: "
                             "not independent (one may be a prefix of the other)")  # fmt: skip
        seen[r["seed"]] = r["dir"]


def pooled_ess(runs: list[dict], name: str, batch_ps: float) -> dict:
    """Batch-means ESS per ns of ``name`` pooled over ``runs`` (batches of ``batch_ps``)."""
    frames = []
    for r in runs:
        f = batch_ps / r["dt_ps"]
        if not math.isclose(f, round(f)):
            raise SystemExit(f"{r['dir']}: {batch_ps} ps is not a whole number of frames")
        frames.append(round(f))
    est = batch_means([r["series"][name] for r in runs], frames)
    ns = sum(r["n_frames"] // b * b * r["dt_ps"] for r, b in zip(runs, frames)) / 1000.0
    return {"ess_per_ns": est.ess / ns, "ess_per_ns_error": est.ess_error / ns,
            "mean": est.mean, "mean_error": est.mean_error, "ns": ns,
            "n_batches": est.n_batches}  # fmt: skip


def ratio(a: float, ea: float, b: float, eb: float) -> tuple[float, float]:
    r = a / b
    return r, r * math.hypot(ea / a, eb / b)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--compare", required=True,
                    help="moltune pt compare-samplers folder: the side-by-side CPU prices")  # fmt: skip
    ap.add_argument("--plain", nargs="+", required=True, help="independent plain PT runs")
    ap.add_argument("--flow-runs", nargs="*", default=[],
                    help="independent `moltune pt sample --flow` runs of the comparison's flow "
                    "and ladder, pooled with the comparison's own flow_pt run")  # fmt: skip
    ap.add_argument("--without-compare-flow", action="store_true",
                    help="pool only --flow-runs (the comparison's flow_pt only prices)")
    ap.add_argument("--batch-ps", type=float, default=BATCH_PS,
                    help="batch length (ps) of the main row; sampler_statistics uses the same")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)

    comp = json.loads((Path(args.compare) / "compare.json").read_text())["variants"]
    price = {s: comp[s]["cpu_s_per_ns"] for s in ("plain_pt", "flow_pt")}
    flow_dirs = [] if args.without_compare_flow else [Path(args.compare) / "flow_pt"]
    flow_dirs += args.flow_runs
    runs = {"plain_pt": [lowest_temperature_series(d) for d in args.plain],
            "flow_pt": [lowest_temperature_series(d) for d in flow_dirs]}  # fmt: skip
    for group in runs.values():
        if not group:
            raise SystemExit("no runs for one of the samplers")
        check_independent(group)
    t_low = runs["plain_pt"][0]["ladder"][0]
    print(f"CPU per ns, side by side ({args.compare}): plain PT {price['plain_pt']:.0f} s, "
          f"flow-PT {price['flow_pt']:.0f} s")  # fmt: skip
    for s, group in runs.items():
        ns = sum(r["n_frames"] * r["dt_ps"] for r in group) / 1000.0
        print(f"{s}: {len(group)} independent runs, {ns:.2f} ns at {t_low:.0f} K")

    result: dict = {"price_cpu_s_per_ns": price, "batch_ps": args.batch_ps,
                    "runs": {s: [r["dir"] for r in g] for s, g in runs.items()},
                    "observables": {}}  # fmt: skip
    for name in OBSERVABLES:
        print(f"\n{name} at {t_low:.0f} K")
        print(f"{'batch / ps':>10s} {'plain ESS/CPU h':>20s} {'flow-PT ESS/CPU h':>20s} "
              f"{'ratio':>14s}")  # fmt: skip
        rows = {}
        for batch_ps in sorted({args.batch_ps, *BATCH_LENGTHS_PS}):
            est = {s: pooled_ess(g, name, batch_ps) for s, g in runs.items()}
            per_h = {s: (e["ess_per_ns"] * 3600.0 / price[s],
                         e["ess_per_ns_error"] * 3600.0 / price[s]) for s, e in est.items()}  # fmt: skip
            r, er = ratio(*per_h["flow_pt"], *per_h["plain_pt"])
            mark = "  <- main" if batch_ps == args.batch_ps else ""
            print(f"{batch_ps:10.0f} {per_h['plain_pt'][0]:11.4g} ± {per_h['plain_pt'][1]:<6.2g} "
                  f"{per_h['flow_pt'][0]:11.4g} ± {per_h['flow_pt'][1]:<6.2g} "
                  f"{r:6.2f} ± {er:<5.2f}{mark}")  # fmt: skip
            rows[batch_ps] = {"samplers": est, "ess_per_cpu_hour": per_h,
                              "ratio": r, "ratio_error": er}  # fmt: skip
        main_row = rows[args.batch_ps]["samplers"]
        p, f = main_row["plain_pt"], main_row["flow_pt"]
        z = (f["mean"] - p["mean"]) / math.hypot(f["mean_error"], p["mean_error"])
        print(f"mean: plain {p['mean']:.4g} ± {p['mean_error']:.2g}, flow-PT {f['mean']:.4g} ± "
              f"{f['mean_error']:.2g} (z = {z:+.2f})")  # fmt: skip
        result["observables"][name] = {str(k): v for k, v in rows.items()} | {"z_mean": z}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
