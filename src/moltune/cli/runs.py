"""CLI: ``moltune runs diagnose | overfitting | compare`` — judge training runs from their logs."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from moltune.common.errors import (
    InvalidInputError,
    check_output_dir,
    check_output_file,
)

_ROLE_HELP = ("assign a log column to a role, repeatable: ROLE=COLUMN (roles: train_loss, "
              "val_loss, grad_norm, lr, val_samples, energy_forward, ..., quality:NAME)")


def _add_metric_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", action="append", default=[], metavar="ROLE=COLUMN", help=_ROLE_HELP)
    p.add_argument("--config", help="YAML file of thresholds (see rules.Thresholds) and a "
                   "metrics: mapping ROLE: COLUMN")


def _finite(name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise InvalidInputError(f"{name} {value}: must be a finite number")


def check_output(folder: str | Path, names: tuple[str, ...]) -> Path:
    """Refuse (one line, exit 2) an output folder, or any of its output files ``names``, that
    cannot be written; creates nothing."""
    folder = check_output_dir(folder)
    for name in names:
        check_output_file(folder / name)
    return folder


def _roles(args: argparse.Namespace):
    """(Thresholds, {contract name: column}) from --config and --metric."""
    from moltune.validation.metrics import parse_overrides
    from moltune.validation.rules import Thresholds, load_thresholds

    cfg, roles = (load_thresholds(args.config) if args.config else (Thresholds(), {}))
    return cfg, parse_overrides(roles) | parse_overrides(args.metric)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="diagnose runs, find overfitting, compare runs with statistics")
    rs = p.add_subparsers(dest="runs_command", metavar="RUNS_COMMAND", required=True)

    d = rs.add_parser(
        "diagnose",
        help="explain a run: findings ranked by severity with evidence (diagnosis.md/.json)",
        description="Read a run folder (config.yaml, metrics.csv, checkpoints/, evaluation "
        "metrics.json, stopped.json) or a plain Lightning CSVLogger folder (metrics.csv + "
        "hparams.yaml, also under version_N/), TensorBoard event files or a W&B CSV export, and "
        "write diagnosis.md, diagnosis.json and plots/diagnosis_*.png.",
    )
    d.add_argument("run", help="run folder or log file")
    d.add_argument("--out", help="output folder (default: the run folder)")
    d.add_argument("--wandb-run", help="run name inside a multi-run W&B CSV export")
    d.add_argument("--min-val-samples", type=int, help="validation set size below which it is "
                   "not trusted (default 10)")
    d.add_argument("--explosion-kT", type=float, help="energy excess (kT) counted as an explosion "
                   "(default 1e4)")
    _add_metric_options(d)
    d.set_defaults(func=_diagnose)

    o = rs.add_parser(
        "overfitting",
        help="first epoch where val/train loss passes a threshold; recommend the checkpoint before",
        description="Writes overfitting.json (first_overfit_epoch, recommended_epoch, threshold, "
        "ratio series) and plots/overfitting.png. Reads Lightning CSV logs, TensorBoard event "
        "files and W&B CSV exports.",
    )
    o.add_argument("run", help="run folder or log file")
    o.add_argument("--threshold", type=float, default=1.5,
                   help="val/train loss ratio that counts as overfitting (default 1.5)")
    o.add_argument("--mode", choices=("auto", "ratio", "difference"), default="auto",
                   help="ratio (positive losses) or difference val-train (auto: ratio if possible)")
    o.add_argument("--train-metric", help="training-loss column (default: resolved from the log's "
                   "names, e.g. train/loss, train_loss, loss/train, loss)")
    o.add_argument("--val-metric", help="validation-loss column (default: resolved, e.g. val/loss, "
                   "val_loss, loss/val)")
    o.add_argument("--out", help="output folder (default: the run folder)")
    o.add_argument("--wandb-run", help="run name inside a multi-run W&B CSV export")
    _add_metric_options(o)
    o.set_defaults(func=_overfitting)

    c = rs.add_parser(
        "compare",
        help="compare runs / seed groups / checkpoints on a metric (bootstrap CI, Welch, Hedges' g)",
        description="Each argument is a run folder, a checkpoint (RUN/checkpoints/epoch=E-...ckpt), "
        "a folder of seed runs, or LABEL=PATH,PATH,... (globs allowed). Seeds are the unit.",
    )
    c.add_argument("runs", nargs="+", help="runs or groups (at least two)")
    c.add_argument("--metric", required=True, help="metric name, e.g. val/loss")
    c.add_argument("--reduce", choices=("last", "min", "max"), default="last",
                   help="how a run's logged series becomes one value (default: last)")
    c.add_argument("--reference", help="compare every group against this one (default: all pairs)")
    c.add_argument("--correction", choices=("holm", "bh", "none"), default="holm")
    c.add_argument("--alpha", type=float, default=0.05, help="significance level, in (0, 1)")
    c.add_argument("--out", default="comparison", help="output folder (default: ./comparison)")
    c.set_defaults(func=_compare)


def _diagnose(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from moltune.validation import logs
    from moltune.validation.diagnose import run_diagnosis

    _finite("--explosion-kT", args.explosion_kT)
    if args.explosion_kT is not None and args.explosion_kT <= 0:
        raise InvalidInputError(f"--explosion-kT {args.explosion_kT}: must be > 0")
    if args.min_val_samples is not None and args.min_val_samples < 0:
        raise InvalidInputError(f"--min-val-samples {args.min_val_samples}: must be >= 0")
    cfg, roles = _roles(args)
    if args.min_val_samples is not None:
        cfg = replace(cfg, min_val_samples=args.min_val_samples)
    if args.explosion_kT is not None:
        cfg = replace(cfg, explosion_kT=args.explosion_kT)
    run_root = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    if not Path(args.run).exists():
        logs.load_run(args.run)  # the one-line "no such run" error
    check_output(args.out or run_root, ("diagnosis.md", "diagnosis.json",
                                          "plots/diagnosis_loss.png", "plots/diagnosis_energies.png",
                                          "plots/diagnosis_quality.png"))
    d = run_diagnosis(args.run, args.out, cfg, args.wandb_run, roles)
    out = args.out or d.run
    for f in d.findings:
        print(f"[{f.severity}] {f.id}: {f.title}")
    print(f"wrote {out}/diagnosis.md and diagnosis.json")
    return 0


def _overfitting(args: argparse.Namespace) -> int:
    from moltune.validation import logs
    from moltune.validation.overfitting import run_overfitting

    _finite("--threshold", args.threshold)
    _, roles = _roles(args)
    if not Path(args.run).exists():
        logs.load_run(args.run)
    run_root = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    check_output(args.out or run_root, ("overfitting.json", "plots/overfitting.png"))
    result, path = run_overfitting(args.run, args.threshold, args.out, args.train_metric,
                                   args.val_metric, args.mode, args.wandb_run, roles)
    print(result.message)
    if result.recommended_checkpoint:
        print(f"recommended checkpoint: {result.recommended_checkpoint}")
    print(f"wrote {path}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from moltune.validation.compare import compare_runs, to_markdown, write_comparison

    if not (0 < args.alpha < 1):  # also refuses NaN
        raise InvalidInputError(f"--alpha {args.alpha}: must be in (0, 1)")
    check_output(args.out, ("comparison.md", "comparison.csv", "comparison.json", "groups.csv",
                            "comparison.png"))
    result = compare_runs(args.runs, args.metric, args.reduce, args.reference, args.correction,
                          args.alpha)
    paths = write_comparison(result, args.out)
    print(to_markdown(result))
    print(f"wrote {paths['comparison.md']}, {paths['comparison.csv']} and {paths['plot']}")
    return 0
