"""CLI: `moltune demo` (placeholder; the owning area fills it in)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="(not yet available)")
    p.set_defaults(func=lambda args: print("not yet available") or 1)
