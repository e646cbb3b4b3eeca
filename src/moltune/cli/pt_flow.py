"""CLI: ``moltune pt train`` (transport-flow training) and the ``moltune train-molecular`` alias.

    moltune pt train --preset aa_300_450 [--data DIR] [--test-data DIR] [--epochs N | --steps N]
                     [--batch-size B] [--lr X] [--[no-]validate]
                     [--flow baseline_ic|spline_ic|tarflow] [--representation internal|cartesian]
                     [--max-minutes M] --out RUN [--resume]

``train-molecular`` keeps the original tool's spelling (``--output-dir``, ``--learning-rate``,
``--source-temp``/``--target-temp``, ``--data-dir``) and runs the same trainer.
"""

from __future__ import annotations

import argparse


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset", default="aa_300_450", help="preset name or YAML file (default aa_300_450)"
    )
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--epochs", type=int, help="passes over the training frames")
    limit.add_argument("--steps", type=int, help="optimiser steps")
    p.add_argument("--batch-size", type=int, help="samples per direction per step")
    p.add_argument("--max-minutes", type=float, help="wall-clock limit in minutes")
    p.add_argument(
        "--validate", action=argparse.BooleanOptionalAction, default=None,
        help="validate (held-out swap acceptance) during training (default: preset)",
    )  # fmt: skip
    p.add_argument("--flow", choices=("baseline_ic", "spline_ic", "tarflow"), help="flow family")
    p.add_argument("--representation", choices=("internal", "cartesian"), help="coordinates")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue RUN from its last checkpoint")


def register(
    pt_sub: argparse._SubParsersAction, top_sub: argparse._SubParsersAction | None = None
) -> None:
    p = pt_sub.add_parser(
        "train",
        help="train a temperature-transport flow on replica-exchange data",
        description="Train a transport flow (TarFlow or the per-coordinate baseline) between "
        "neighbouring temperatures of a PT data set; writes config, metrics.csv, checkpoints "
        "and plots into --out.",
    )
    _add_common(p)
    p.add_argument(
        "--data", nargs="+", metavar="DIR",
        help="training PT data folder(s) (moltune pt simulate output; several runs of one "
        "peptide and ladder are combined)",
    )  # fmt: skip
    p.add_argument(
        "--test-data",
        help="held-out PT data folder for validation ('none': hold out the tail of --data)",
    )
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--out", required=True, help="run folder")
    p.set_defaults(func=_train)
    if top_sub is not None:
        q = top_sub.add_parser(
            "train-molecular",
            help="alias of `moltune pt train` with the original tool's flags",
        )
        _add_common(q)
        q.add_argument("--data-dir", dest="data", help="training PT data folder")
        q.add_argument("--test-data-dir", dest="test_data", help="held-out PT data folder")
        q.add_argument("--learning-rate", "--lr", dest="lr", type=float)
        q.add_argument("--output-dir", "--out", dest="out", required=True, help="run folder")
        q.add_argument("--source-temp", type=float, help="source temperature (K) in the data")
        q.add_argument("--target-temp", type=float, help="target temperature (K) in the data")
        q.set_defaults(func=_train)


def _pair_from_temperatures(data_dir: str, t_source: float | None, t_target: float | None):
    if t_source is None and t_target is None:
        return None
    import numpy as np

    from moltune.common.errors import InvalidInputError
    from moltune.physics.ptdata import load_pt_data

    temps = np.asarray(load_pt_data(data_dir).temperatures_K)
    idx = []
    for t in (t_source, t_target):
        hits = np.nonzero(np.isclose(temps, t)) if t is not None else ([],)
        if t is None or len(hits[0]) == 0:
            raise InvalidInputError(
                f"give both --source-temp and --target-temp from the ladder {temps.tolist()} K"
            )
        idx.append(int(hits[0][0]))
    return [idx]


def _train(args: argparse.Namespace) -> int:
    from moltune.common.config import load_config
    from moltune.flow.train import TrainConfig, train

    flow = {k: v for k, v in (("name", args.flow), ("representation", args.representation)) if v}
    test = getattr(args, "test_data", None)
    train_dir = args.data[0] if isinstance(args.data, list) and len(args.data) == 1 else args.data
    data = {k: v for k, v in (("train_dir", train_dir), ("test_dir", test)) if v and v != "none"}
    overrides = {
        "epochs": args.epochs, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "validate": args.validate, "max_minutes": args.max_minutes, "seed": args.seed, "threads": args.threads,
        "flow": flow or None, "data": data or None,
    }  # fmt: skip
    if args.epochs is not None or args.steps is not None:
        # an explicit limit replaces the preset's other count limit (time still applies)
        overrides["steps" if args.epochs is not None else "epochs"] = None
    cfg = load_config(
        TrainConfig,
        args.preset,
        **{k: v for k, v in overrides.items() if k not in ("steps", "epochs")},
    )
    import dataclasses

    if args.epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=args.epochs, steps=None)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps, epochs=None)
    if getattr(args, "test_data", None) in ("none", "None", ""):
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, test_dir=None))
    pair = _pair_from_temperatures(
        cfg.data.train_dir, getattr(args, "source_temp", None), getattr(args, "target_temp", None)
    )
    if pair is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pairs=pair))
    run = train(cfg, args.out, resume=args.resume)
    print(f"run folder: {run}")
    from moltune.validation.monitors import exit_code_for

    return exit_code_for(run)  # 3 when a red-flag monitor stopped the run
