"""CLI: ``moltune pt simulate`` — parallel-tempering data with OpenMM (layout: moltune.physics.ptdata)."""

from __future__ import annotations

import argparse

from moltune.common.errors import nonnegative_float, nonnegative_int, positive_float, positive_int


def add_system_options(p: argparse.ArgumentParser) -> None:
    """The peptide and the temperature ladder (K), for every command that runs PT."""
    p.add_argument("--peptide", required=True, help='one-letter sequence ("AA") or a PDB file')
    p.add_argument("--temperatures", type=positive_float, nargs="+", default=[300, 450, 670, 1000],
                   metavar="K", help="ascending temperatures in K (default: 300 450 670 1000)")  # fmt: skip


def add_simulation_options(p: argparse.ArgumentParser, save_interval_ps: float = 1.0) -> None:
    """Integrator, swap, output and platform flags shared by every command that runs PT."""
    p.add_argument("--save-interval-ps", type=positive_float, default=save_interval_ps,
                   help=f"frame interval ({save_interval_ps:g} ps)")  # fmt: skip
    p.add_argument("--swap-interval-ps", type=positive_float, default=0.1, help="swap interval (0.1 ps)")
    p.add_argument("--equilibration-ps", type=nonnegative_float, default=10.0,
                   help="discarded equilibration before saving (10 ps)")  # fmt: skip
    p.add_argument("--checkpoint-interval-ps", type=positive_float, default=50.0,
                   help="checkpoint / chunk interval (50 ps)")  # fmt: skip
    p.add_argument("--timestep-fs", type=positive_float, default=1.0)
    p.add_argument("--friction-per-ps", type=nonnegative_float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--solvent", default="obc2", choices=("obc2", "vacuum"))
    p.add_argument("--threads", type=positive_int, default=1, help="OpenMM CPU threads per context")
    p.add_argument("--platform", default="CPU", help="OpenMM platform (CPU, Reference, CUDA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(pt_sub: argparse._SubParsersAction, top_sub: argparse._SubParsersAction) -> None:
    p = pt_sub.add_parser(
        "simulate",
        help="run (or resume) parallel tempering of a peptide with OpenMM",
        description="Parallel tempering with OpenMM (LangevinMiddleIntegrator, no constraints, "
        "Amber14 + OBC2 by default). Swaps between neighbouring temperatures are attempted every "
        "--swap-interval-ps (even/odd pairs alternating) and accepted by Metropolis. Writes "
        "topology.pdb, metadata.json, pt_data.npz (and chunks/, state.npz) into --out; running the "
        "same command again resumes an interrupted run, or extends it with a longer --time-ns.",
    )
    add_system_options(p)
    p.add_argument("--time-ns", type=positive_float, required=True, help="production time per replica, ns")
    p.add_argument("--out", required=True, help="output directory")
    add_simulation_options(p)
    p.add_argument("--workers", type=nonnegative_int, default=0,
                   help="worker processes owning the replicas (0: all in this process)")  # fmt: skip
    p.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from moltune.physics.replica_exchange import PTConfig, simulate

    cfg = PTConfig(
        temperatures_K=args.temperatures,
        time_ns=args.time_ns,
        save_interval_ps=args.save_interval_ps,
        swap_interval_ps=args.swap_interval_ps,
        equilibration_ps=args.equilibration_ps,
        checkpoint_interval_ps=args.checkpoint_interval_ps,
        timestep_fs=args.timestep_fs,
        friction_per_ps=args.friction_per_ps,
        seed=args.seed,
        solvent=args.solvent,
        workers=args.workers,
        threads=args.threads,
        platform=args.platform,
    )
    res = simulate(args.peptide, args.out, cfg, progress=not args.no_progress)
    acc = ", ".join(
        f"{a:.0f}-{b:.0f} K: {x:.3f}"
        for a, b, x in zip(cfg.temperatures_K, cfg.temperatures_K[1:], res["swap_acceptance"])
    )
    speed = res["speed"]["ns_per_day_per_replica"]
    print(
        f"{args.out}: {res['n_frames']} frames per temperature"
        + (" (resumed)" if res["resumed"] else "")
        + (f"; swap acceptance {acc}" if acc else "")
        + (f"; {speed:.0f} ns/day per replica" if speed else "")
    )
    return 0
