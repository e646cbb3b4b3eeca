"""CLI: ``moltune sbdd ...`` — pocket-conditioned ligand diffusion.

Subcommands are registered by the modules that own them:
``sbdd_model`` (generate), ``sbdd_data`` (process, evaluate), ``sbdd_train`` (train, baselines).
"""

from __future__ import annotations

import argparse
import importlib

MODULES = ("sbdd_model", "sbdd_data", "sbdd_train", "sbdd_dock")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sbdd", help="pocket-conditioned ligand diffusion (DiffSBDD + FiLM)")
    s = p.add_subparsers(dest="sbdd_command", metavar="SBDD_COMMAND", required=True)
    for name in MODULES:
        try:
            module = importlib.import_module(f"moltune.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"moltune.cli.{name}":
                raise
            continue
        module.register(s)
