"""CLI: ``moltune demo [--out DIR] [--time-ps T]`` — build AA, run short PT, write plots + stats."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job end to end: build AA, parallel tempering, Ramachandran plots, energies",
        description="Builds the AA dipeptide, runs a short parallel-tempering simulation "
        "(300/450/670/1000 K), writes Ramachandran plots, energy histograms and energy statistics, "
        "trains a short 300 K <-> 450 K transport flow, and writes report.md into a run folder.",
    )
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--preset", default=None, help="YAML preset with DemoConfig fields")
    p.add_argument("--time-ps", type=float, default=None,
                   help="PT production time per replica in ps (default 20)")  # fmt: skip
    p.add_argument("--sequence", default=None, help="peptide sequence (default AA)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--flow-steps", type=int, default=None,
                   help="steps of the short transport-flow training (default 60; 0 skips it)")  # fmt: skip
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from moltune.common.config import load_config
    from moltune.demo import DemoConfig, run_demo

    cfg = load_config(
        DemoConfig,
        args.preset,
        time_ps=args.time_ps,
        sequence=args.sequence,
        seed=args.seed,
        flow_steps=args.flow_steps,
    )
    ctx = run_demo(args.out, cfg)
    print(f"demo finished: {ctx.run.report} (plots in {ctx.run.plots})")
    return 0
