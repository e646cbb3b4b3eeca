"""CLI: ``moltune pt sample`` (flow-enhanced PT), ``moltune pt compare-samplers``,
``moltune pt transfer`` (one flow on several peptides; ``pt train-transfer``: cli.pt_flow).

Library: ``moltune.flow.pt_sampler`` (run, compare), ``moltune.flow.transfer``,
``moltune.flow.rebuild``, ``moltune.flow.peptides``.
"""

from __future__ import annotations

import argparse

from moltune.cli.pt_simulate import add_simulation_options, add_system_options


def _pt_options(p: argparse.ArgumentParser, save_interval_ps: float = 1.0) -> None:
    add_simulation_options(p, save_interval_ps)
    p.add_argument("--observable-residue", type=int, default=0,
                   help="which phi/psi column the slow observable uses (AA: 0, the only one)")  # fmt: skip


def _pt_kwargs(args: argparse.Namespace) -> dict:
    return {
        "save_interval_ps": args.save_interval_ps,
        "swap_interval_ps": args.swap_interval_ps,
        "equilibration_ps": args.equilibration_ps,
        "checkpoint_interval_ps": args.checkpoint_interval_ps,
        "timestep_fs": args.timestep_fs,
        "friction_per_ps": args.friction_per_ps,
        "seed": args.seed,
        "solvent": args.solvent,
        "threads": args.threads,
        "platform": args.platform,
    }


def register(pt_sub: argparse._SubParsersAction, top_sub: argparse._SubParsersAction) -> None:
    p = pt_sub.add_parser(
        "sample",
        help="parallel tempering whose swaps go through a transport flow (no --flow: plain PT)",
        description="Replicas propagated by OpenMM as in `moltune pt simulate`; neighbour swaps "
        "(and optional skips) propose (T^-1(y), T(x)) through the flow and are accepted with "
        "min(1, exp(D)), which keeps every temperature's Boltzmann distribution. Writes the "
        "`pt simulate` layout plus sampler.json, sampler_stats.json (per-pair acceptance, flow "
        "statistics, round trips, CPU) and plots/sampler.png. Rerunning resumes or extends.",
    )
    add_system_options(p)
    p.add_argument("--flow", default=None,
                   help="trained flow run folder or checkpoint (`moltune pt train`), or "
                   "'identity' (the naive swap through the flow path); none: plain PT")  # fmt: skip
    p.add_argument("--skip", type=int, nargs=2, action="append", default=[], metavar=("I", "J"),
                   help="also try direct swaps between temperature indices I and J (repeatable)")  # fmt: skip
    p.add_argument("--skip-every", type=int, default=1, help="try skips every N >= 1 swap events")
    p.add_argument(
        "--velocities", choices=("harmonic", "redraw", "keep"), default="harmonic",
        help="velocities after an accepted flow swap: 'harmonic' (default) draws them as the "
        "Langevin integrator's stationary state given the new coordinates (exact for stiff "
        "bonds and angles); 'redraw' plain Maxwell-Boltzmann (about 1 kT too hot at 1 fs); "
        "'keep' the replica's own (worse)",
    )  # fmt: skip
    p.add_argument("--time-ns", type=float, required=True, help="production time per replica, ns")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--workers", type=int, default=0,
                   help="worker processes owning the replicas (0: all in this process; CPU "
                   "accounting then covers everything)")  # fmt: skip
    _pt_options(p)
    p.set_defaults(func=_sample)

    c = pt_sub.add_parser(
        "compare-samplers",
        help="plain PT vs flow-PT for the same CPU: acceptance, round trips, ESS per CPU hour",
        description="Runs plain PT and flow-PT on the same ladder (and a 2-replica skip ladder "
        "when the flow serves that pair) into OUT/<variant>, matches their process CPU time to "
        "the flow-PT run's, and writes compare.md, compare.json and compare.png.",
    )
    add_system_options(c)
    c.add_argument("--flow", required=True, help="trained flow run folder or checkpoint")
    c.add_argument("--skip-temperatures", type=float, nargs=2, default=[300, 1000],
                   metavar=("LOW", "HIGH"), help="the 2-replica skip ladder (300 1000)")  # fmt: skip
    c.add_argument("--no-skip", action="store_true", help="no 2-replica skip variant")
    c.add_argument("--no-match-cpu", action="store_true",
                   help="run every variant for --time-ns instead of equal CPU time")  # fmt: skip
    c.add_argument("--reference", default=None, metavar="DIR",
                   help="long plain PT run of the peptide: populations checked against it")  # fmt: skip
    c.add_argument("--time-ns", type=float, required=True, help="flow-PT time per replica, ns")
    c.add_argument("--out", required=True)
    _pt_options(c, save_interval_ps=0.1)
    c.set_defaults(func=_compare)
    register_transfer(pt_sub)


def _sample(args: argparse.Namespace) -> int:
    from moltune.flow.pt_sampler.run import sample
    from moltune.flow.rebuild import load_sampler_flow
    from moltune.physics.replica_exchange import PTConfig

    cfg = PTConfig(temperatures_K=args.temperatures, time_ns=args.time_ns, workers=args.workers,
                   **_pt_kwargs(args))  # fmt: skip
    flow, info = load_sampler_flow(args.flow)
    res = sample(
        args.peptide, args.out, cfg, flow=flow, flow_info=info,
        skip_pairs=[tuple(s) for s in args.skip], skip_every=args.skip_every,
        velocities=args.velocities,
        progress=not args.no_progress, observable_residue=args.observable_residue,
    )  # fmt: skip
    acc = ", ".join(
        f"{p['temperatures_K'][0]:g}-{p['temperatures_K'][1]:g} K ({p['swap']}): "
        f"{p['acceptance']:.3f}"
        for p in res["pairs"].values()
    )
    print(
        f"{args.out}: {res['n_frames']} frames per temperature"
        + (" (resumed)" if res["resumed"] else "")
        + f"; swap acceptance {acc}; {res['round_trips']} round trips"
        + (
            f"; flow {res['flow_cpu_fraction']:.0%} of {res['cpu_s']:.0f} CPU s"
            if args.flow
            else f"; {res['cpu_s']:.0f} CPU s"
        )
    )
    return 0


def _compare(args: argparse.Namespace) -> int:
    from moltune.flow.pt_sampler.compare import compare_samplers

    doc = compare_samplers(
        args.peptide, args.flow, args.time_ns, args.out,
        temperatures_K=args.temperatures,
        skip_temperatures_K=None if args.no_skip else tuple(args.skip_temperatures),
        match_cpu=not args.no_match_cpu, progress=not args.no_progress,
        observable_residue=args.observable_residue, reference_dir=args.reference,
        **_pt_kwargs(args),
    )  # fmt: skip
    print(f"{args.out}/compare.md")
    for r in doc["table"]:
        o = r.get("phi_positive", {})
        print(f"  {r['variant']:10s} ESS(phi>0)/CPU h = {o.get('ess_per_cpu_hour', float('nan')):.3g}"
              f" (batch means {o.get('bm_ess_per_cpu_hour', float('nan')):.3g})"
              f"  round trips/ns = {r['round_trips_per_ns']:.3g}")  # fmt: skip
    return 0


def register_transfer(pt_sub: argparse._SubParsersAction) -> None:
    t = pt_sub.add_parser(
        "transfer",
        help="naive vs flow swap acceptance per temperature pair for several peptides (one table)",
        description="Evaluates one flow zero-shot on the PT data of each peptide (NAME=DIR) and "
        "writes transfer.md / transfer.json with the naive swap beside every flow entry.",
    )
    t.add_argument("--flow", required=True, help="flow run/checkpoint, or 'identity'")
    t.add_argument("--data", nargs="+", required=True, metavar="NAME=DIR",
                   help="PT data folders (`moltune pt simulate`) per peptide")  # fmt: skip
    t.add_argument("--pairs", type=int, nargs=2, action="append", metavar=("I", "J"),
                   help="ladder index pairs (default: neighbours and 0 <-> K-1)")  # fmt: skip
    t.add_argument("--n-pairs", type=int, default=2000, help="frame pairs per entry (2000)")
    t.add_argument("--out", required=True)
    t.set_defaults(func=_transfer)


def _transfer(args: argparse.Namespace) -> int:
    from pathlib import Path

    from moltune.common.errors import InvalidInputError
    from moltune.common.io import write_json, write_text
    from moltune.flow.rebuild import run_flow_factory
    from moltune.flow.transfer import render_transfer, transfer_table

    dirs = {}
    for item in args.data:
        if "=" not in item:
            raise InvalidInputError(f"--data expects NAME=DIR, got {item!r}")
        name, d = item.split("=", 1)
        dirs[name] = d
    rows = transfer_table(run_flow_factory(args.flow), dirs,
                          [tuple(p) for p in args.pairs] if args.pairs else None,
                          n_pairs=args.n_pairs)  # fmt: skip
    out = Path(args.out)
    write_json(out / "transfer.json", {"flow": args.flow, "rows": rows})
    text = render_transfer(rows, f"Swap acceptance, naive vs flow ({args.flow})")
    write_text(out / "transfer.md", text)
    print(text)
    return 0
