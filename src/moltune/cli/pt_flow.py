"""CLI: the transport-flow training commands: ``moltune pt train``, ``moltune pt train-transfer``
(one flow for several peptides) and the ``moltune train-molecular`` alias.

    moltune pt train --preset aa_300_450 [--data-root DIR] [--simulate-missing] [--data DIR]
                     [--test-data DIR] [--epochs N | --steps N] [--batch-size B] [--lr X]
                     [--[no-]validate] [--flow baseline_ic|spline_ic|tarflow]
                     [--representation internal|cartesian] [--max-minutes M] --out RUN [--resume]
                     [--accelerator A] [--devices N] [--strategy S] [--num-nodes N]
                     [--precision P] [--logger tensorboard|wandb]

Every setting, the run folder and the data are checked before the run folder is created.

``train-molecular`` keeps the original tool's spelling (``--output-dir``, ``--learning-rate``,
``--source-temp``/``--target-temp``, ``--data-dir``) and runs the same trainer.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from moltune.common.training import add_data_root_argument, add_trainer_arguments, trainer_overrides


def _add_data_root(p: argparse.ArgumentParser) -> None:
    add_data_root_argument(p)
    p.add_argument("--simulate-missing", action="store_true",
                   help="run the `moltune pt simulate` commands that make missing data folders")


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
    _add_data_root(p)
    add_trainer_arguments(p)


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
    _register_transfer(pt_sub)


def _register_transfer(pt_sub: argparse._SubParsersAction) -> None:
    m = pt_sub.add_parser(
        "train-transfer",
        help="train one conditional TarFlow on the PT data of several peptides (shared core)",
        description="Each peptide keeps its own coordinate representation and energy; the "
        "TarFlow core (atoms enter through their embeddings) is shared, so the run can be "
        "evaluated zero-shot on unseen peptides with `moltune pt transfer --flow RUN`. "
        "--init starts from a trained run (fine-tuning on another peptide); --resume continues "
        "an interrupted run from its last checkpoint.",
    )
    m.add_argument("--preset", default="transfer_aa_ak_as",
                   help="preset name or YAML file (default transfer_aa_ak_as)")  # fmt: skip
    m.add_argument("--peptide", action="append", metavar="NAME=TRAIN_DIR[,TEST_DIR]",
                   help="replace the preset's peptides (repeatable)")  # fmt: skip
    m.add_argument("--init", help="trained run/checkpoint whose core starts this run")
    m.add_argument("--steps", type=int)
    m.add_argument("--max-minutes", type=float)
    m.add_argument("--batch-size", type=int)
    m.add_argument("--lr", type=float)
    m.add_argument("--warmup-steps", type=int)
    m.add_argument("--val-every-steps", type=int)
    m.add_argument("--seed", type=int)
    m.add_argument("--no-progress", action="store_true")
    m.add_argument("--out", required=True, help="run folder (new unless --resume)")
    m.add_argument("--resume", action="store_true",
                   help="continue OUT from its last checkpoint (same preset and flags)")  # fmt: skip
    _add_data_root(m)
    add_trainer_arguments(m)
    m.set_defaults(func=_train_transfer)


def _absolute(d: str | None) -> str | None:
    """A folder given on the command line (relative to the working folder, not the data root)."""
    return None if d in (None, "", "none", "None") else str(Path(d).resolve())


def _simulate_missing(missing, simulate: bool) -> int:
    """Refuse missing data with its exact command, or (``--simulate-missing``) make it."""
    from moltune.common.training import refuse_missing_data

    if not missing:
        return 0
    if not simulate:
        refuse_missing_data(missing)
    import shlex

    from moltune.cli.main import build_parser

    for folder, recipe in missing:
        args = build_parser().parse_args(["pt", "simulate", *shlex.split(recipe), "--out",
                                          str(folder)])  # fmt: skip
        rc = args.func(args)
        if rc:
            return rc
    return 0


def _train_transfer(args: argparse.Namespace) -> int:
    import json

    from moltune.common.errors import InvalidInputError
    from moltune.common.training import check_run_folder, is_rank_zero, missing_data
    from moltune.flow.train import check_config, data_folders, load_train_config, train

    peptides = None
    if args.peptide:
        peptides = {}
        for item in args.peptide:
            if "=" not in item:
                raise InvalidInputError(f"--peptide expects NAME=TRAIN_DIR[,TEST_DIR], got {item!r}")
            name, dirs = item.split("=", 1)
            train_dir, _, test = dirs.partition(",")
            peptides[name] = {"train_dir": _absolute(train_dir), "test_dir": _absolute(test)}
    cfg = load_train_config(
        args.preset, init=args.init, steps=args.steps,
        max_minutes=args.max_minutes, batch_size=args.batch_size, lr=args.lr,
        warmup_steps=args.warmup_steps, val_every_steps=args.val_every_steps, seed=args.seed,
        data={"root": args.data_root} if args.data_root else None,
        trainer=trainer_overrides(args),
    )  # fmt: skip
    if peptides is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, peptides=peptides,
                                                                train_dir=None, test_dir=None))
    check_config(cfg)
    check_run_folder(args.out, args.resume)
    rc = _simulate_missing(missing_data(data_folders(cfg), cfg.data.simulate, cfg.data.root),
                           args.simulate_missing)  # fmt: skip
    if rc:
        return rc
    run = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    if not is_rank_zero():
        return 0
    s = json.loads((run / "train_summary.json").read_text())
    print(f"{args.out}: {s['steps']} steps in {s['minutes']:.1f} min; validation acceptance "
          f"{s['start']['val/acceptance_flow']:.3f} -> best {s['best_val_acceptance_flow']:.3f} "
          f"(naive {s['start']['val/acceptance_naive']:.3f})")  # fmt: skip
    from moltune.validation.monitors import exit_code_for

    return exit_code_for(args.out)  # 3 when a red-flag monitor stopped the run


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


def train_config(args: argparse.Namespace):
    """The resolved TrainConfig of ``pt train`` / ``train-molecular`` (defaults <- preset <-
    flags), checked: nothing is created."""
    from moltune.flow.train import check_config, load_train_config

    flow = {k: v for k, v in (("name", args.flow), ("representation", args.representation)) if v}
    test = getattr(args, "test_data", None)
    data_arg = args.data if isinstance(args.data, list) else ([args.data] if args.data else None)
    train_dir = None
    if data_arg:
        train_dir = [_absolute(d) for d in data_arg]
        train_dir = train_dir[0] if len(train_dir) == 1 else train_dir
    data = {k: v for k, v in (("train_dir", train_dir), ("test_dir", _absolute(test)),
                              ("root", getattr(args, "data_root", None))) if v}  # fmt: skip
    overrides = {
        "batch_size": args.batch_size, "lr": args.lr, "validate": args.validate,
        "max_minutes": args.max_minutes, "seed": args.seed, "threads": args.threads,
        "flow": flow or None, "data": data or None, "trainer": trainer_overrides(args),
    }  # fmt: skip
    cfg = load_train_config(args.preset, **overrides)
    # an explicit limit replaces the preset's other count limit (time still applies)
    if args.epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=args.epochs, steps=None)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps, epochs=None)
    if test in ("none", "None", ""):
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, test_dir=None))
    check_config(cfg)
    return cfg


def _train(args: argparse.Namespace) -> int:
    from moltune.common.training import check_run_folder, missing_data
    from moltune.flow.train import data_folders, train

    cfg = train_config(args)
    check_run_folder(args.out, args.resume)
    folders = data_folders(cfg)
    rc = _simulate_missing(missing_data(folders, cfg.data.simulate, cfg.data.root),
                           args.simulate_missing)  # fmt: skip
    if rc:
        return rc
    pair = _pair_from_temperatures(
        folders[0], getattr(args, "source_temp", None), getattr(args, "target_temp", None)
    )
    if pair is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pairs=pair))
    run = train(cfg, args.out, resume=args.resume)
    print(f"run folder: {run}")
    from moltune.validation.monitors import exit_code_for

    return exit_code_for(run)  # 3 when a red-flag monitor stopped the run
