"""CLI: ``moltune pt evaluate RUN [--data DIR] [--pair I J] [--identity] --out DIR``.

Scores a trained transport flow (a run folder or checkpoint) on held-out replica-exchange data;
``--identity`` scores the naive swap (no RUN needed). See ``moltune.flow.evaluate``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(pt_sub: argparse._SubParsersAction, top_sub: argparse._SubParsersAction) -> None:
    p = pt_sub.add_parser(
        "evaluate",
        help="score a transport flow on held-out PT data (acceptance, divergences, figures)",
        description="Push held-out frames of temperature I through the flow to temperature J and "
        "back, and write metrics.json (swap acceptance naive vs flow with 95% intervals, "
        "Jeffreys divergence, energies, ESS, Ramachandran JS, distances, non-finite fraction, "
        "round-trip RMSD), figures and report.md into --out.",
    )
    p.add_argument("run", metavar="RUN", nargs="?", help="flow run folder or checkpoint file")
    p.add_argument(
        "--data", help="held-out PT data folder (default: the run's test data, if known)"
    )
    p.add_argument(
        "--pair",
        nargs=2,
        type=int,
        metavar=("I", "J"),
        default=None,
        help="indices of the source and target temperatures in the data (default: 0 1, or the "
        "run's pair)",
    )
    p.add_argument("--identity", action="store_true", help="evaluate the naive swap (no RUN)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n-pairs", type=int, default=10_000, help="swap pairs (default 10000)")
    p.add_argument(
        "--max-frames",
        type=int,
        default=None,
        help="at most this many evenly spaced frames per temperature",
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_evaluate)


def _from_info(info: dict, *keys: str):
    """First value found under ``keys`` (dotted paths allowed) in the checkpoint info."""
    for key in keys:
        node = info
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


def _evaluate(args: argparse.Namespace) -> int:
    from moltune.common.errors import InvalidInputError

    if args.identity == bool(args.run):
        raise InvalidInputError("give either a flow RUN or --identity (the naive swap), not both")

    import torch  # noqa: F401 - heavy imports only once a command runs

    from moltune.flow.evaluate import check_evaluation_args, evaluate_flow, metrics_to_log

    check_evaluation_args(args.n_pairs, args.max_frames, args.n_boot, args.batch_size, args.out)

    info: dict = {}
    if args.identity:
        from moltune.flow.models import IdentityFlow

        flow, label = IdentityFlow(), "identity"
    else:
        from moltune.flow.checkpoint import load_flow

        flow, info = load_flow(args.run)
        label = str(info.get("name") or info.get("flow") or Path(args.run).name)
    data = args.data or _from_info(info, "test_data", "data_test", "config.data.test_dir")
    if not data:
        raise InvalidInputError("no held-out data folder known for this run: pass --data DIR")
    pair = args.pair or _from_info(info, "pair", "config.data.pair") or (0, 1)
    metrics = evaluate_flow(
        flow,
        data,
        pair=tuple(pair),
        out_dir=args.out,
        n_pairs=args.n_pairs,
        max_frames=args.max_frames,
        n_boot=args.n_boot,
        batch_size=args.batch_size,
        seed=args.seed,
        label=label,
    )
    print(json.dumps(metrics_to_log(metrics)))
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'report.md'}")
    return 0
