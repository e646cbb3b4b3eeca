"""CLI: ``moltune sbdd train | baselines | standin`` — FiLM fine-tuning and its protocol."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moltune.common.training import add_data_root_argument, add_trainer_arguments, trainer_overrides


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="fine-tune a DiffSBDD checkpoint with a FiLM adapter (adapter-only or full)",
        description="Lightning run: AdamW with weight decay, warm-up + cosine schedule, gradient "
        "clipping, generation on the validation pockets every eval.every_n_steps (val/validity, "
        "val/connectivity, val/qed, val/sa), adapter diagnostics, red-flag monitors (adapter "
        "drift, gradient norm, connectivity floor, val/train ratio), top-k + last checkpoints. "
        "Exit status 3 when a monitor stopped the run (RUN/stopped.json).",
    )
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="YAML config file")
    src.add_argument("--preset", help="preset name (e.g. sbdd_film_adapter)")
    t.add_argument("--checkpoint", help="pretrained DiffSBDD checkpoint (overrides the config)")
    t.add_argument("--data", help="processed folder (overrides data.processed)")
    add_data_root_argument(t)
    t.add_argument("--out", help="run folder (overrides out)")
    t.add_argument("--max-steps", type=int, help="overrides max_steps")
    t.add_argument("--lr", type=float, help="overrides optim.lr")
    t.add_argument("--mode", choices=("adapter", "full"), help="overrides mode")
    t.add_argument("--resume", action="store_true", help="continue the run in `out` from last.ckpt")
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_trainer_arguments(t)
    t.set_defaults(func=_train)

    b = sub.add_parser(
        "baselines",
        help="baseline protocol: pretrained vs identity FiLM vs random FiLM vs fine-tuned",
        description="Same pockets, same seeds. Writes baselines.md (side-by-side table with CIs, "
        "effect sizes vs the pretrained model, verdicts), baselines.json, controls.md/json/png and "
        "samples.json. Exit status 1 when a control fails (identity differs from pretrained, or "
        "random FiLM is not detected).",
    )
    b.add_argument("checkpoint", help="pretrained DiffSBDD checkpoint")
    b.add_argument("--data", required=True, help="processed folder (or raw complexes)")
    b.add_argument("--n-samples", type=int, default=4, help="molecules per pocket per seed")
    b.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    b.add_argument("--finetuned", nargs="*", default=[],
                   help="fine-tuned adapters (adapter-*.pt) or fine-tuning run folders")
    b.add_argument("--split", default="val", help="which split's pockets (default val)")
    b.add_argument("--timesteps", type=int, default=50, help="denoising steps (default 50)")
    b.add_argument("--metric", default="valid_and_connected",
                   choices=("validity", "connectivity", "valid_and_connected", "qed", "sa"))
    b.add_argument("--film-hidden-dims", type=int, nargs="+", default=[128])
    b.add_argument("--random-film-gain", type=float, default=1.0,
                   help="scale of the random adapter's last layer (default 1: PyTorch init)")
    b.add_argument("--max-pockets", type=int, default=None,
                   help="use the first N pockets only (N >= 1; default: all)")
    b.add_argument("--pockets", nargs="+", default=[], metavar="ID",
                   help="use only these complexes of the split")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared CPU more threads can be far slower)")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=_baselines)

    s = sub.add_parser(
        "standin",
        help="train a stand-in model of the published layout from scratch (memorises its data)",
        description="For machines without the published weights: trains a DiffSBDD-layout model "
        "on a few shared complexes, writes OUT/checkpoints/standin.ckpt (DiffSBDD layout), "
        "eval.json (validity/connectivity on its training pockets), report.md and plots.",
    )
    s.add_argument("--data", help="raw complexes or a processed folder (default: the preset's)")
    add_data_root_argument(s)
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--preset", default="sbdd_standin", help="preset (default sbdd_standin)")
    s.add_argument("--steps", type=int, help="overrides steps")
    s.add_argument("--init", help="warm start from this DiffSBDD checkpoint (overrides the "
                   "preset's init; 'scratch' for the model's own initialisation)")
    s.add_argument("--no-progress", action="store_true")
    add_trainer_arguments(s)
    s.set_defaults(func=_standin)


def _train(args: argparse.Namespace) -> int:
    from moltune.common.config import load_config, merge
    from moltune.sbdd.train import FinetuneConfig, train
    from moltune.validation.monitors import EXIT_STOPPED

    cfg = load_config(FinetuneConfig, args.config or args.preset, checkpoint=args.checkpoint,
                      out=args.out, max_steps=args.max_steps, mode=args.mode)
    over: dict = {}
    if args.data:
        over["data"] = {"processed": args.data}
    if args.data_root:
        over["data"] = {**over.get("data", {}), "root": args.data_root}
    if args.lr is not None:
        over["optim"] = {"lr": args.lr}
    if args.no_progress:
        over["progress"] = False
    if trainer_overrides(args):
        over["trainer"] = trainer_overrides(args)
    cfg = merge(cfg, over)
    info = train(cfg, resume=args.resume)
    if info.get("rank"):  # a DDP rank other than 0 reports nothing
        return 0
    print(json.dumps({k: info[k] for k in ("run_dir", "global_step", "max_steps",
                                           "best_checkpoint", "best_score", "n_trainable")}
                     | {"stopped": (info["stopped"] or {}).get("monitor")}))
    return EXIT_STOPPED if info["stopped"] else 0


def _baselines(args: argparse.Namespace) -> int:
    from moltune.sbdd.baselines import BaselineConfig, run_baselines

    cfg = BaselineConfig(checkpoint=args.checkpoint, data=args.data, out=args.out,
                         n_samples=args.n_samples, seeds=list(args.seeds),
                         finetuned=list(args.finetuned), split=args.split,
                         timesteps=args.timesteps, metric=args.metric,
                         film_hidden_dims=list(args.film_hidden_dims),
                         random_film_gain=args.random_film_gain,
                         max_pockets=args.max_pockets, pockets=list(args.pockets), progress=not args.no_progress,
                         threads=args.threads)
    res = run_baselines(cfg)
    print(Path(args.out, "baselines.md").read_text())
    return 0 if res["controls_passed"] else 1


def _standin(args: argparse.Namespace) -> int:
    from moltune.common.config import load_config
    from moltune.sbdd.standin import StandinConfig, train_standin

    cfg = load_config(StandinConfig, args.preset, data=args.data, data_root=args.data_root,
                      out=args.out, steps=args.steps, init=args.init,
                      trainer=trainer_overrides(args))  # fmt: skip
    res = train_standin(cfg, progress=not args.no_progress)
    if "rank" in res:  # a DDP rank other than 0 reports nothing
        return 0
    print(json.dumps({"checkpoint": res["checkpoint"], **{k: res["summary"].get(k) for k in (
        "validity", "connectivity", "valid_and_connected")}}))
    return 0
