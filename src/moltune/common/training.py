"""The one training lifecycle every moltune trainer uses (Lightning).

A trainer builds its LightningModule and data; this module does the rest the same way for all:
checks every setting and the run folder *before* anything is created (:func:`check_run_folder`),
the hardware (:class:`TrainerConfig`: accelerator, devices, strategy, nodes, precision; the
command-line flags of every training command, :func:`add_trainer_arguments`), the loggers (CSV
always, TensorBoard / W&B on request), atomic checkpoints, the warm-up + cosine schedule
(:func:`lr_factor`), metric rows kept across a resume (:func:`fit`), and data named relative to a
data root (:func:`resolve_data`). Only rank 0 writes files. Multi-device and multi-node runs
use Lightning's own launchers (its DDP subprocess launcher, torchrun, SLURM).
"""

from __future__ import annotations

import logging
import math
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch.utils.data import Sampler

from moltune.common.errors import (
    CheckpointError,
    InputFileError,
    InvalidInputError,
    check_number,
)
from moltune.common.io import torch_save

log = logging.getLogger(__name__)

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
LOGGERS = ("tensorboard", "wandb")
PRECISIONS = ("auto", "64-true", "32-true", "32", "16-mixed", "bf16-mixed", "bf16-true",
              "16-true", "64")  # fmt: skip
DATA_ROOT_ENV = "MOLTUNE_DATA"
DEFAULT_DATA_ROOT = "data"


@dataclass
class TrainerConfig:
    """Where and how a run trains (hardware is configuration, never code).

    ``devices``: ``auto``, a count, or a list of device indices. ``precision`` is the network's
    (Lightning's names: ``32-true``, ``bf16-mixed``, ...); energies stay float64 whatever it is.
    ``logger``: extra loggers beside the CSV log (``tensorboard``, ``wandb``); ``wandb_mode``
    ``offline`` (default) keeps W&B on disk under ``RUN/wandb``.
    """

    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"
    logger: list = field(default_factory=list)
    wandb_mode: str = "offline"
    wandb_project: str = "moltune"


def check_trainer_config(tc: TrainerConfig) -> None:
    """Refuse settings Lightning would only reject after the run folder exists."""
    if tc.accelerator not in ACCELERATORS:
        raise InvalidInputError(f"accelerator must be one of {ACCELERATORS}, got {tc.accelerator!r}")
    d = tc.devices
    ok = d == "auto" or (isinstance(d, int) and not isinstance(d, bool) and d >= 1) or (
        isinstance(d, list) and d and all(isinstance(i, int) and i >= 0 for i in d))
    if isinstance(d, str) and d != "auto":
        ok = d.isdigit() and int(d) >= 1
    if not ok:
        raise InvalidInputError(f"devices must be 'auto', a count >= 1 or a list of indices, "
                                f"got {d!r}")  # fmt: skip
    if not isinstance(tc.num_nodes, int) or tc.num_nodes < 1:
        raise InvalidInputError(f"num_nodes must be an integer >= 1, got {tc.num_nodes!r}")
    if str(tc.precision) not in PRECISIONS:
        raise InvalidInputError(f"precision must be one of {PRECISIONS}, got {tc.precision!r}")
    if not isinstance(tc.strategy, str) or not tc.strategy:
        raise InvalidInputError(f"strategy must be a Lightning strategy name, got {tc.strategy!r}")
    loggers = [tc.logger] if isinstance(tc.logger, str) else list(tc.logger or [])
    bad = [x for x in loggers if x not in LOGGERS]
    if bad:
        raise InvalidInputError(f"unknown logger(s) {bad}; choose from {LOGGERS} (CSV is always on)")
    if "wandb" in loggers:
        try:
            import wandb  # noqa: F401
        except ImportError as exc:
            raise InvalidInputError("--logger wandb needs the optional extra: "
                                    "pip install 'moltune[wandb]'") from exc  # fmt: skip
    if "tensorboard" in loggers:
        try:
            import tensorboard  # noqa: F401
        except ImportError as exc:
            raise InvalidInputError("--logger tensorboard needs the tensorboard package") from exc
    if tc.wandb_mode not in ("offline", "online", "disabled"):
        raise InvalidInputError(f"wandb_mode must be offline, online or disabled, "
                                f"got {tc.wandb_mode!r}")  # fmt: skip


def add_trainer_arguments(p) -> None:
    """``--accelerator --devices --strategy --num-nodes --precision --logger`` (every trainer)."""
    g = p.add_argument_group("hardware and logging (default: the preset's, else auto)")
    g.add_argument("--accelerator", choices=ACCELERATORS, help="device type")
    g.add_argument("--devices", help="device count, 'auto', or comma-separated indices")
    g.add_argument("--strategy", help="Lightning strategy (auto, ddp, ddp_spawn, fsdp, ...)")
    g.add_argument("--num-nodes", type=int, help="machines (launched by torchrun or SLURM)")
    g.add_argument("--precision", choices=PRECISIONS,
                   help="network precision (energies stay float64)")  # fmt: skip
    g.add_argument("--logger", action="append", choices=LOGGERS,
                   help="extra logger beside metrics.csv (repeatable)")  # fmt: skip


def add_data_root_argument(p) -> None:
    """``--data-root``: the folder a preset's data folders are named in."""
    p.add_argument("--data-root", help="folder the preset's data folders are named in "
                   f"(default ${DATA_ROOT_ENV}, else ./{DEFAULT_DATA_ROOT})")  # fmt: skip


def trainer_overrides(args) -> dict[str, Any] | None:
    """The ``trainer`` section overrides from the flags of :func:`add_trainer_arguments`."""
    devices = getattr(args, "devices", None)
    if isinstance(devices, str) and devices != "auto":
        try:
            parts = [int(v) for v in devices.split(",")]
        except ValueError as exc:
            raise InvalidInputError(f"--devices expects a count, 'auto' or indices like 0,1; "
                                    f"got {devices!r}") from exc  # fmt: skip
        devices = parts[0] if "," not in args.devices else parts
    over = {
        "accelerator": getattr(args, "accelerator", None), "devices": devices,
        "strategy": getattr(args, "strategy", None), "num_nodes": getattr(args, "num_nodes", None),
        "precision": getattr(args, "precision", None), "logger": getattr(args, "logger", None),
    }  # fmt: skip
    over = {k: v for k, v in over.items() if v is not None}
    return over or None


def is_rank_zero() -> bool:
    """Whether this process writes files (rank 0; known from the launcher's environment)."""
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def world() -> tuple[int, int]:
    """(rank, world size) of this process (0, 1 without torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# --------------------------------------------------------------------------- the run folder
def check_run_folder(out: str | Path, resume: bool) -> Path | None:
    """Refuse a run folder that cannot be used, creating nothing; returns ``last.ckpt`` to resume.

    A new run needs a folder without a checkpoint; ``resume`` needs a readable
    ``checkpoints/last.ckpt`` (a truncated file is refused here, not inside Lightning).
    """
    from moltune.common.run import CHECKPOINT_DIR

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"run folder {out} is a file")
    last = out / CHECKPOINT_DIR / "last.ckpt"
    if not resume:
        if last.exists():
            raise InvalidInputError(f"{out} already holds a run; pass --resume or a new --out")
        return None
    if not last.is_file():
        raise InputFileError(f"cannot resume: {last} does not exist")
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot resume: {last} is damaged ({type(exc).__name__}); "
                              "start a new --out or restore the file") from exc  # fmt: skip
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"cannot resume: {last} is not a Lightning checkpoint")
    return last


def open_run(out: str | Path, cfg: Any):
    """The run folder with its resolved config (written by rank 0 only)."""
    from moltune.common.run import RunDir

    run = RunDir(Path(out))
    if is_rank_zero():
        run.write_config(cfg)
    return run


# --------------------------------------------------------------------------- data root
def data_root(value: str | Path | None = None) -> Path:
    """``--data-root``, else ``$MOLTUNE_DATA``, else ``./data``."""
    return Path(value or os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT)


def resolve_data(path: str | Path, root: str | Path | None = None) -> str:
    """A data folder named in a preset: absolute as is, relative under the data root (or, when
    only that exists, relative to the working folder: a folder given on the command line)."""
    p = Path(path)
    if p.is_absolute():
        return str(p)
    under = data_root(root) / p
    return str(p if not under.exists() and p.exists() else under)


def simulate_command(args: str, out: str | Path) -> str:
    """The ``moltune pt simulate`` command line that makes data folder ``out``."""
    return f"moltune pt simulate {args} --out {shlex.quote(str(out))}"


def missing_data(folders: list[str | Path], recipes: dict[str, str],
                 root: str | Path | None = None) -> list[tuple[Path, str]]:  # fmt: skip
    """The PT data folders that do not exist, each with its ``moltune pt simulate`` arguments.

    ``recipes`` maps a folder name (relative to the data root) to those arguments; a missing
    folder without a recipe is refused here.
    """
    base = data_root(root)
    out = []
    for f in map(Path, folders):
        if f.exists():
            continue
        name = str(f.relative_to(base)) if f.is_relative_to(base) else None
        recipe = recipes.get(name) if name is not None else None
        if recipe is None:
            raise InputFileError(f"PT data folder not found: {f} (make it with `moltune pt "
                                 f"simulate ... --out {f}`, or pass --data-root)")  # fmt: skip
        out.append((f, recipe))
    return out


def refuse_missing_data(missing: list[tuple[Path, str]]) -> None:
    """One line naming the exact command that makes the first missing folder."""
    if missing:
        f, recipe = missing[0]
        more = f" (and {len(missing) - 1} more folder(s))" if len(missing) > 1 else ""
        raise InputFileError(f"PT data folder not found: {f}{more}; make it with "
                             f"`{simulate_command(recipe, f)}`, pass --simulate-missing, or "
                             "--data-root DIR")  # fmt: skip


# --------------------------------------------------------------------------- schedule
def lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine",
              min_fraction: float = 0.05) -> float:  # fmt: skip
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine decay to
    ``min_fraction`` at ``total`` (or constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_fraction + (1 - min_fraction) * 0.5 * (1 + math.cos(math.pi * p))


def check_positive(**values: Any) -> None:
    """Refuse a setting that must be a positive finite number (``None``: unset, allowed)."""
    for name, v in values.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise InvalidInputError(f"{name} must be a positive number, got {v!r}")
        check_number(name, v, above=0)


# --------------------------------------------------------------------------- sampling
class EpochShardSampler(Sampler):
    """Indices of one epoch for this rank: a permutation seeded by (seed, epoch), rank r taking
    every world-th index (so the ranks' batches together are the one-process global batch).

    Yields ``(epoch, index)`` so a dataset can draw per-item randomness from (seed, epoch, index)
    alone: the same items whatever the number of ranks, and after a resume.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, per_rank_batch: int = 1):
        self.n, self.seed, self.shuffle, self.per_rank_batch = n, seed, shuffle, per_rank_batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _indices(self) -> np.ndarray:
        rank, size = world()
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
                 if self.shuffle else np.arange(self.n))  # fmt: skip
        per_step = self.per_rank_batch * size
        usable = (self.n // per_step) * per_step  # whole global batches only
        return order[:usable][rank::size]

    def __len__(self) -> int:
        return len(self._indices())

    def __iter__(self):
        return iter([(self.epoch, int(i)) for i in self._indices()])


def shard(n: int) -> range:
    """This rank's block of ``n`` items (rank r of W: a contiguous block, the blocks' sizes
    differing by at most one), so the ranks' results gathered in rank order are in item order."""
    rank, size = world()
    return range(rank * n // size, (rank + 1) * n // size)


class ShardSampler(Sampler):
    """This rank's :func:`shard` of ``n`` validation items: no item twice, none dropped. A
    count-weighted reduction (``self.log(..., batch_size=b, sync_dist=True)``) or :func:`gather`
    then gives the one-process figure."""

    def __init__(self, n: int):
        self.n = n

    def _indices(self) -> range:
        size = world()[1]
        if self.n < size:  # a rank without a batch would skip validation and stall the others
            raise InvalidInputError(f"{self.n} validation item(s) cannot be shared by {size} "
                                    "processes (each needs one)")  # fmt: skip
        return shard(self.n)

    def __len__(self) -> int:
        return len(self._indices())

    def __iter__(self):
        return iter(self._indices())


def gather(obj: Any) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    size = world()[1]
    if size == 1:
        return [obj]
    out: list = [None] * size
    torch.distributed.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------- trainer
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint writer that renames a complete temporary file into place."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch_save(path, checkpoint)


def one_console_line() -> None:
    """Lightning's loggers print through their own handler and again through the root's: keep one."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        if logging.getLogger().handlers:
            lg.handlers.clear()
            lg.propagate = True


def make_loggers(tc: TrainerConfig, run, flush_every: int = 100) -> list:
    """CSV (``RUN/metrics.csv``) always; TensorBoard (``RUN/tensorboard``), W&B (``RUN/wandb``)."""
    from lightning.pytorch.loggers import CSVLogger

    loggers: list = [CSVLogger(save_dir=str(run.path), name="", version="",
                               flush_logs_every_n_steps=max(1, flush_every))]  # fmt: skip
    extra = [tc.logger] if isinstance(tc.logger, str) else list(tc.logger or [])
    if "tensorboard" in extra:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run.path), name="tensorboard", version="",
                                         default_hp_metric=False))  # fmt: skip
    if "wandb" in extra:
        from lightning.pytorch.loggers import WandbLogger

        mode = {} if tc.wandb_mode == "offline" else {"mode": tc.wandb_mode}
        loggers.append(WandbLogger(save_dir=str(run.path), project=tc.wandb_project,
                                   name=run.path.name, offline=tc.wandb_mode == "offline",
                                   **mode))  # fmt: skip
    return loggers


def make_trainer(tc: TrainerConfig, run, callbacks: list, *, progress: bool = True,
                 flush_every: int = 100, **kwargs):  # fmt: skip
    """A Lightning Trainer on the configured hardware with the run's loggers and atomic
    checkpoints; ``kwargs`` are the trainer's own limits and validation cadence."""
    import lightning as L

    one_console_line()
    precision = None if str(tc.precision) == "auto" else tc.precision
    return L.Trainer(
        accelerator=tc.accelerator, devices=tc.devices, strategy=tc.strategy,
        num_nodes=tc.num_nodes, precision=precision, logger=make_loggers(tc, run, flush_every),
        callbacks=callbacks, plugins=[AtomicCheckpointIO()], enable_progress_bar=progress,
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
        **kwargs,
    )  # fmt: skip


def fit(trainer, module, run, resume_from: Path | None, **fit_kwargs) -> None:
    """``trainer.fit``, keeping the metric rows of the interrupted run on resume (Lightning's
    CSV logger starts ``metrics.csv`` afresh)."""
    previous = read_metrics(run.metrics) if resume_from is not None and is_rank_zero() else None
    trainer.fit(module, ckpt_path=str(resume_from) if resume_from else None, **fit_kwargs)
    finish_logging(trainer, run, previous)


def finish_logging(trainer, run, previous=None) -> None:
    """Flush the loggers; put back the rows of an interrupted run (rank 0)."""
    for lg in trainer.loggers:
        lg.save()
    if trainer.is_global_zero:
        if previous is not None:
            merge_metrics(run.metrics, previous)
        (run.path / "hparams.yaml").unlink(missing_ok=True)


def read_metrics(path: Path):
    import pandas as pd

    return pd.read_csv(path) if Path(path).is_file() else None


def merge_metrics(path: Path, previous) -> None:
    """Put the rows of the interrupted run (those before the first resumed step) back in front
    of the resumed run's rows, atomically."""
    import pandas as pd

    from moltune.common.io import atomic_path

    new = pd.read_csv(path) if Path(path).is_file() else previous.iloc[:0]
    first = new["step"].min() if len(new) else np.inf
    merged = pd.concat([previous[previous["step"] < first], new], ignore_index=True)
    with atomic_path(path) as tmp:
        merged.to_csv(tmp, index=False)
