"""CLI: ``moltune pt ...`` — parallel tempering data, transport flows, flow-enhanced sampling.

Subcommands are registered by the modules that own them:
``pt_simulate`` (simulate), ``pt_flow`` (train, evaluate), ``pt_sampler`` (sample, compare-samplers).
"""

from __future__ import annotations

import argparse
import importlib

MODULES = ("pt_simulate", "pt_flow", "pt_flow_eval", "pt_sampler")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pt", help="parallel tempering: simulate data, train/evaluate flows, sample")
    pt_sub = p.add_subparsers(dest="pt_command", metavar="PT_COMMAND", required=True)
    for name in MODULES:
        try:
            module = importlib.import_module(f"moltune.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"moltune.cli.{name}":
                raise
            continue
        module.register(pt_sub, sub)
