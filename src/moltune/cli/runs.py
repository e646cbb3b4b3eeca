"""CLI: ``moltune runs diagnose | overfitting | compare`` — judge training runs from their logs."""

from __future__ import annotations

import argparse


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
    c.add_argument("--alpha", type=float, default=0.05)
    c.add_argument("--out", default="comparison", help="output folder (default: ./comparison)")
    c.set_defaults(func=_compare)


def _diagnose(args: argparse.Namespace) -> int:
    from moltune.validation.diagnose import DiagnoseConfig, run_diagnosis

    cfg = DiagnoseConfig()
    if args.min_val_samples is not None:
        cfg.min_val_samples = args.min_val_samples
    if args.explosion_kT is not None:
        cfg.explosion_kT = args.explosion_kT
    d = run_diagnosis(args.run, args.out, cfg, args.wandb_run)
    out = args.out or d.run
    for f in d.findings:
        print(f"[{f.severity}] {f.id}: {f.title}")
    print(f"wrote {out}/diagnosis.md and diagnosis.json")
    return 0


def _overfitting(args: argparse.Namespace) -> int:
    from moltune.validation.overfitting import run_overfitting

    result, path = run_overfitting(args.run, args.threshold, args.out, args.train_metric,
                                   args.val_metric, args.mode, args.wandb_run)
    print(result.message)
    if result.recommended_checkpoint:
        print(f"recommended checkpoint: {result.recommended_checkpoint}")
    print(f"wrote {path}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from moltune.validation.compare import compare_runs, to_markdown, write_comparison

    result = compare_runs(args.runs, args.metric, args.reduce, args.reference, args.correction,
                          args.alpha)
    paths = write_comparison(result, args.out)
    print(to_markdown(result))
    print(f"wrote {paths['comparison.md']}, {paths['comparison.csv']} and {paths['plot']}")
    return 0
