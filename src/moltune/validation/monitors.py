"""Red-flag monitors: Lightning callbacks that catch a broken run while it trains.

Each monitor reads only what the trainer logs (``trainer.callback_metrics``, with the metric names
of the contract) or the gradients Lightning hands to ``on_before_optimizer_step``; none knows the
model. Each monitor runs the rule of :mod:`moltune.validation.rules` that the diagnosis runs on
the whole run, on the history so far, and fires when the newest value violates it; the defaults
of :class:`MonitorConfig` (one nested dataclass per monitor, each with ``action: warn|stop``,
``patience`` — consecutive violations before it fires — and ``start_epoch``) are the shared
:class:`~moltune.validation.rules.Thresholds`.

A monitor that fires with ``action="stop"``:

- sets ``trainer.should_stop`` (Lightning finishes the step, runs one last validation, stops);
- marks the trainer as stopped so :class:`GuardedModelCheckpoint` never overwrites the last good
  checkpoint with the broken state;
- writes ``RUN/stopped.json`` (monitor, values, step, epoch, message, last good checkpoint)
  atomically and a short ``RUN/stopped.md``.

Warnings (and stops) are also appended to ``RUN/redflags.json``. After ``trainer.fit`` returns,
a trainer's CLI returns :func:`exit_code_for` (``EXIT_STOPPED`` = 3 when stopped.json exists) or
calls :func:`raise_if_stopped`.

Attach::

    callbacks = default_monitors(cfg.monitors, run_dir) + [
        GuardedModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, ...)]
"""

from __future__ import annotations

import logging
import math
import os
import time
import weakref
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from moltune.common.io import write_text
from moltune.validation import metrics as mn
from moltune.validation import rules
from moltune.validation.rules import DEFAULTS
from moltune.validation.serialize import write_strict_json

log = logging.getLogger(__name__)

Action = Literal["warn", "stop"]
EXIT_STOPPED = 3
STOPPED_FILE = "stopped.json"
STOPPED_REPORT = "stopped.md"
REDFLAGS_FILE = "redflags.json"


# --------------------------------------------------------------------------- configuration


@dataclass
class NonFiniteConfig:
    """Non-finite loss / energy / gradient; also too many non-finite transformed samples."""

    enabled: bool = True
    action: Action = "stop"
    patience: int = 1
    start_epoch: int = 0
    metrics: list[str] = field(default_factory=lambda: [
        mn.TRAIN_LOSS, mn.TRAIN_LOSS_FORWARD, mn.TRAIN_LOSS_INVERSE,
        mn.VAL_LOSS, mn.VAL_LOSS_FORWARD, mn.VAL_LOSS_INVERSE,
        mn.VAL_ENERGY_FORWARD, mn.VAL_ENERGY_INVERSE, mn.TRAIN_GRAD_NORM,
    ])
    check_gradients: bool = True
    max_nonfinite_fraction: float = DEFAULTS.max_nonfinite_fraction  # of val/nonfinite_fraction
    train_patience: int = 3  # consecutive non-finite training batches (trainers may skip one)


@dataclass
class EnergyExplosionConfig:
    """Mean energy of transformed samples more than ``max_kT`` kT above the reference mean."""

    enabled: bool = True
    action: Action = "stop"
    patience: int = 1
    start_epoch: int = 0
    max_kT: float = DEFAULTS.explosion_kT
    default_kT_kjmol: float | None = None  # used when the trainer logs no kT metric
    # direction -> (energy of transformed samples, reference mean, kT), all kJ/mol
    directions: dict[str, list[str]] = field(default_factory=lambda: {
        d: list(names[:3]) for d, names in mn.DIRECTIONS.items()})


@dataclass
class AsymmetryConfig:
    """One direction improving while the other gets worse over the last ``window`` evaluations.

    A trend needs |Kendall tau| >= ``min_trend`` against time and a relative change of at least
    ``min_rel_change`` between the window's first and last value (lower is better).
    """

    enabled: bool = True
    action: Action = "warn"
    patience: int = 1
    start_epoch: int = 0
    window: int = 5
    min_trend: float = DEFAULTS.asymmetry_trend
    min_rel_change: float = DEFAULTS.asymmetry_rel_change
    pairs: list[list[str]] = field(default_factory=lambda: [
        [mn.VAL_LOSS_FORWARD, mn.VAL_LOSS_INVERSE],
        [mn.VAL_ENERGY_FORWARD, mn.VAL_ENERGY_INVERSE],
    ])


@dataclass
class GradNormConfig:
    """Gradient L2 norm (over all parameters, before clipping) above ``max_norm``, or
    ``spike_factor`` times its own median so far."""

    enabled: bool = True
    action: Action = "warn"
    patience: int = 1
    start_epoch: int = 0
    max_norm: float = DEFAULTS.grad_norm_max
    spike_factor: float = DEFAULTS.grad_spike_factor


@dataclass
class LossRatioConfig:
    """Validation loss / mean training loss since the previous evaluation above ``max_ratio``
    (positive losses only; a ratio of negative log-likelihoods means nothing)."""

    enabled: bool = True
    action: Action = "warn"
    patience: int = 1
    start_epoch: int = 0
    max_ratio: float = DEFAULTS.overfit_ratio
    train_metric: str = mn.TRAIN_LOSS
    val_metric: str = mn.VAL_LOSS


@dataclass
class QualityFloorConfig:
    """A quality metric (higher is better) below its floor, e.g. connectivity < 0.5."""

    enabled: bool = True
    action: Action = "stop"
    patience: int = 1
    start_epoch: int = 0
    floors: dict[str, float] = field(default_factory=lambda: {
        mn.VAL_CONNECTIVITY: DEFAULTS.quality_floors[mn.VAL_CONNECTIVITY]})


@dataclass
class AdapterDriftConfig:
    """Mean FiLM gamma outside [low, high]."""

    enabled: bool = True
    action: Action = "stop"
    patience: int = 1
    start_epoch: int = 0
    metric: str = mn.ADAPTER_GAMMA_MEAN
    low: float = DEFAULTS.gamma_range[0]
    high: float = DEFAULTS.gamma_range[1]


@dataclass
class MonitorConfig:
    """All red-flag monitors; trainers embed it in their config as ``monitors``."""

    nonfinite: NonFiniteConfig = field(default_factory=NonFiniteConfig)
    energy_explosion: EnergyExplosionConfig = field(default_factory=EnergyExplosionConfig)
    asymmetry: AsymmetryConfig = field(default_factory=AsymmetryConfig)
    grad_norm: GradNormConfig = field(default_factory=GradNormConfig)
    loss_ratio: LossRatioConfig = field(default_factory=LossRatioConfig)
    quality_floor: QualityFloorConfig = field(default_factory=QualityFloorConfig)
    adapter_drift: AdapterDriftConfig = field(default_factory=AdapterDriftConfig)


# --------------------------------------------------------------------------- events and state


@dataclass
class RedFlag:
    """One firing of a monitor."""

    monitor: str
    action: str
    message: str
    values: dict[str, float]
    step: int
    epoch: int
    time: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    last_good_checkpoint: str | None = None


class RunStopped(RuntimeError):
    """A red-flag monitor stopped the run; ``exit_code`` is what the CLI should return."""

    exit_code = EXIT_STOPPED

    def __init__(self, info: dict[str, Any], run_dir: Path):
        self.info = info
        self.run_dir = Path(run_dir)
        super().__init__(
            f"training stopped by red-flag monitor {info.get('monitor')} at step {info.get('step')} "
            f"(epoch {info.get('epoch')}): {info.get('message')}; see {self.run_dir / STOPPED_FILE}"
        )


_EVENTS: weakref.WeakKeyDictionary[Any, list[RedFlag]] = weakref.WeakKeyDictionary()
_STOPS: weakref.WeakKeyDictionary[Any, RedFlag] = weakref.WeakKeyDictionary()
_STARTED: weakref.WeakSet[Any] = weakref.WeakSet()


def stop_event(trainer) -> RedFlag | None:
    """The red flag that stopped this trainer, if any."""
    return _STOPS.get(trainer)


def events(trainer) -> list[RedFlag]:
    """All red flags raised for this trainer so far (warnings and stops)."""
    return list(_EVENTS.get(trainer, []))


def read_stopped(run_dir: str | Path) -> dict[str, Any] | None:
    """Contents of ``RUN/stopped.json``, or None when the run was not stopped."""
    import json

    path = Path(run_dir) / STOPPED_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def exit_code_for(run_dir: str | Path) -> int:
    """Exit code a training CLI returns after ``fit``: ``EXIT_STOPPED`` if stopped.json exists."""
    return EXIT_STOPPED if (Path(run_dir) / STOPPED_FILE).is_file() else 0


def raise_if_stopped(run_dir: str | Path) -> None:
    """Raise :class:`RunStopped` when a monitor stopped the run in ``run_dir``."""
    info = read_stopped(run_dir)
    if info is not None:
        raise RunStopped(info, Path(run_dir))


def _last_good_checkpoint(trainer) -> str | None:
    paths = []
    for cb in getattr(trainer, "checkpoint_callbacks", []):
        for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", "")):
            if p and os.path.exists(p):
                paths.append(p)
    return max(paths, key=os.path.getmtime) if paths else None


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _stopped_report(event: RedFlag, run_dir: Path) -> str:
    rows = "\n".join(f"| `{k}` | {_fmt(v)} |" for k, v in event.values.items())
    ckpt = event.last_good_checkpoint or "none saved before the stop"
    return (
        f"# Run stopped by a red-flag monitor\n\n"
        f"**{event.monitor}** fired at step {event.step} (epoch {event.epoch}): {event.message}\n\n"
        f"| value | |\n|---|---|\n{rows}\n\n"
        f"Last good checkpoint (not overwritten by the broken state): `{ckpt}`\n\n"
        f"Next: `moltune runs diagnose {run_dir}` explains the run; thresholds are in the "
        f"`monitors` section of config.yaml.\n"
    )


def _record(trainer, event: RedFlag, run_dir: Path | None) -> None:
    _EVENTS.setdefault(trainer, []).append(event)
    if event.action == "stop":
        trainer.should_stop = True
        if trainer not in _STOPS:
            event.last_good_checkpoint = _last_good_checkpoint(trainer)
            _STOPS[trainer] = event
            if run_dir is not None and getattr(trainer, "is_global_zero", True):
                write_strict_json(run_dir / STOPPED_FILE, asdict(event))
                write_text(run_dir / STOPPED_REPORT, _stopped_report(event, run_dir))
        log.error("red flag (stop) %s at step %d: %s", event.monitor, event.step, event.message)
    else:
        log.warning("red flag (warn) %s at step %d: %s", event.monitor, event.step, event.message)
    if run_dir is not None and getattr(trainer, "is_global_zero", True):
        write_strict_json(run_dir / REDFLAGS_FILE, [asdict(e) for e in _EVENTS[trainer]])


# --------------------------------------------------------------------------- base monitor


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        if hasattr(value, "detach"):
            if value.numel() != 1:
                return None
            return float(value.detach().float().cpu().item())
        return float(value)
    except (TypeError, ValueError):
        return None


def logged(trainer, name: str) -> float | None:
    """Latest logged value of ``name`` (resolving Lightning's ``_step`` / ``_epoch`` suffixes);
    a module that logs under other conventions (``val_loss``, ``loss/val``) is read through
    :func:`moltune.validation.metrics.contract_name`."""
    metrics = trainer.callback_metrics
    for key in (name, f"{name}_step", f"{name}_epoch"):
        if key in metrics:
            return _as_float(metrics[key])
    for key in metrics:
        if mn.contract_name(key) == name:
            return _as_float(metrics[key])
    return None


class RedFlagMonitor(Callback):
    """Base class: subclasses implement ``check(trainer, pl_module, hook)`` returning
    ``(message, values)`` when the rule is violated, else None; the base class applies
    ``start_epoch`` and ``patience`` and fires (warn or stop)."""

    name = "redflag"
    hooks: tuple[str, ...] = ("validation_end",)

    def __init__(self, action: Action = "warn", patience: int = 1, start_epoch: int = 0,
                 run_dir: str | Path | None = None):
        if action not in ("warn", "stop"):
            raise ValueError(f"{self.name}: action must be 'warn' or 'stop', got {action!r}")
        self.action = action
        self.patience = max(1, int(patience))
        self.start_epoch = int(start_epoch)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._count = 0
        self._active = False
        self.fired: list[RedFlag] = []

    @property
    def state_key(self) -> str:
        return f"{type(self).__name__}:{self.name}"

    def check(self, trainer, pl_module, hook: str) -> tuple[str, dict[str, float]] | None:
        raise NotImplementedError

    def _dir(self, trainer) -> Path | None:
        if self.run_dir is not None:
            return self.run_dir
        root = getattr(trainer, "default_root_dir", None)
        return Path(root) if root else None

    def _evaluate(self, trainer, pl_module, hook: str) -> None:
        if hook not in self.hooks or trainer.sanity_checking:
            return
        if trainer.current_epoch < self.start_epoch or (self.action == "stop" and self.fired):
            return
        result = self.check(trainer, pl_module, hook)
        if result is None:
            self._count = 0
            self._active = False
            return
        self._count += 1
        if self._count < self.patience or (self._active and self.action == "warn"):
            return
        self._active = True
        self._fire(trainer, *result)

    def _fire(self, trainer, message: str, values: dict[str, float]) -> None:
        event = RedFlag(self.name, self.action, message, values, int(trainer.global_step),
                        int(trainer.current_epoch))
        self.fired.append(event)
        _record(trainer, event, self._dir(trainer))

    # Lightning hooks ---------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer in _STARTED:
            return
        _STARTED.add(trainer)
        run_dir = self._dir(trainer)
        if run_dir is None or not trainer.is_global_zero:
            return
        # a resumed run starts clean; the previous attempt's flags are kept beside
        for name in (STOPPED_FILE, STOPPED_REPORT, REDFLAGS_FILE):
            if (run_dir / name).is_file():
                os.replace(run_dir / name, run_dir / name.replace(".", ".previous.", 1))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._outputs = outputs
        self._evaluate(trainer, pl_module, "train_batch_end")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._evaluate(trainer, pl_module, "before_optimizer_step")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._evaluate(trainer, pl_module, "train_epoch_end")

    def on_validation_end(self, trainer, pl_module) -> None:
        self._evaluate(trainer, pl_module, "validation_end")


def grad_norm(pl_module) -> float:
    """Total L2 norm of all parameter gradients (inf / NaN when any gradient is non-finite)."""
    import torch

    norms = [p.grad.detach().float().norm(2) for p in pl_module.parameters() if p.grad is not None]
    if not norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(norms), 2).item())


# --------------------------------------------------------------------------- the monitors


class NonFiniteMonitor(RedFlagMonitor):
    """NaN / inf in a logged loss or energy, in the step's loss, or in any gradient.

    Validation values fire at once (after ``patience`` evaluations). Training batches fire after
    ``train_patience`` consecutive bad batches, so a trainer that skips an isolated non-finite
    step (and counts it in ``train/skipped_steps``) is not stopped for it; a non-finite gradient
    is caught in ``on_before_optimizer_step``, before the optimizer applies it.
    """

    name = "nonfinite"
    hooks = ("validation_end",)

    def __init__(self, metrics: Iterable[str] = NonFiniteConfig().metrics, check_gradients: bool = True,
                 max_nonfinite_fraction: float = 0.5, train_patience: int = 1, **kw):
        super().__init__(**kw)
        self.metrics = list(metrics)
        self.check_gradients = check_gradients
        self.max_nonfinite_fraction = max_nonfinite_fraction
        self.train_patience = max(1, int(train_patience))
        self._bad_batches = 0  # consecutive training batches with a non-finite value
        self._batch_bad: dict[str, float] = {}
        self._batch_fired = False

    def _train_values(self, trainer) -> dict[str, float]:
        bad = {}
        for name in self.metrics:
            if name.startswith("train/"):
                v = logged(trainer, name)
                if v is not None and not math.isfinite(v):
                    bad[name] = v
        return bad

    def _train_fire(self, trainer) -> None:
        if self._batch_fired or (self.action == "stop" and self.fired) or trainer.sanity_checking:
            return
        if trainer.current_epoch < self.start_epoch:
            return
        if self._bad_batches + 1 >= self.train_patience:
            self._batch_fired = True
            n = self._bad_batches + 1
            values = dict(self._batch_bad) | {"consecutive_bad_batches": float(n)}
            self._fire(trainer, f"non-finite training values for {n} consecutive batch(es): "
                       + ", ".join(f"{k}={_fmt(v)}" for k, v in self._batch_bad.items()), values)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_bad, self._batch_fired = {}, False

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.check_gradients:
            return
        g = grad_norm(pl_module)
        if not math.isfinite(g):
            self._batch_bad["grad_norm"] = g
            self._train_fire(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batch_bad |= self._train_values(trainer)
        loss = _as_float(outputs.get("loss") if isinstance(outputs, dict) else outputs)
        if loss is not None and not math.isfinite(loss):
            self._batch_bad["loss"] = loss
        if self._batch_bad:
            self._train_fire(trainer)
            self._bad_batches += 1
        else:
            self._bad_batches = 0

    def check(self, trainer, pl_module, hook):
        bad: dict[str, float] = {}
        for name in self.metrics:
            v = logged(trainer, name)
            if v is not None and not math.isfinite(v) and not name.startswith("train/"):
                bad[name] = v
        frac = logged(trainer, "val/nonfinite_fraction")
        if frac is not None and frac > self.max_nonfinite_fraction:
            bad["val/nonfinite_fraction"] = frac
        if not bad:
            return None
        return f"non-finite or invalid values: {', '.join(f'{k}={_fmt(v)}' for k, v in bad.items())}", bad


class EnergyExplosionMonitor(RedFlagMonitor):
    """Mean energy of transformed samples more than ``max_kT`` kT above the reference mean."""

    name = "energy_explosion"

    def __init__(self, max_kT: float = DEFAULTS.explosion_kT,
                 directions: dict[str, list[str]] | None = None,
                 default_kT_kjmol: float | None = None, **kw):
        super().__init__(**kw)
        self.max_kT = float(max_kT)
        self.directions = directions or EnergyExplosionConfig().directions
        self.default_kT_kjmol = default_kT_kjmol
        self.thresholds = replace(DEFAULTS, explosion_kT=self.max_kT)
        self.history: dict[str, list[tuple[float, float, float]]] = {}

    def check(self, trainer, pl_module, hook):
        for direction, (e_key, ref_key, kt_key) in self.directions.items():
            e, ref, kt = logged(trainer, e_key), logged(trainer, ref_key), logged(trainer, kt_key)
            kt = self.default_kT_kjmol if kt is None else kt
            if e is None or ref is None or kt is None or not kt > 0 or math.isnan(e):
                continue
            hist = self.history.setdefault(direction, [])
            hist.append((e, ref, kt))
            v = rules.energy_explosion(*zip(*hist), self.thresholds)
            if rules.violates_now(v, len(hist)):
                excess = (e - ref) / kt
                return (f"{direction} direction: {v.newest.message}",
                        {e_key: e, ref_key: ref, kt_key: kt, "excess_kT": excess})
        return None


def kendall_trend(values: list[float]) -> float:
    """Kendall tau of ``values`` against their order (+1: rising, -1: falling)."""
    from scipy.stats import kendalltau

    if len(values) < 3 or len(set(values)) < 2:
        return 0.0
    tau = kendalltau(np.arange(len(values)), values).statistic
    return float(tau) if math.isfinite(tau) else 0.0


def trend(values: list[float], min_trend: float, min_rel_change: float) -> int:
    """-1 improving (falling), +1 worsening (rising), 0 neither, for a lower-is-better series."""
    tau = kendall_trend(values)
    first, last = values[0], values[-1]
    rel = (last - first) / max(abs(first), 1e-12)
    if tau <= -min_trend and rel <= -min_rel_change:
        return -1
    if tau >= min_trend and rel >= min_rel_change:
        return 1
    return 0


class AsymmetryMonitor(RedFlagMonitor):
    """One direction improving while the other gets worse over the last ``window`` evaluations."""

    name = "asymmetry"

    def __init__(self, pairs: list[list[str]] | None = None, window: int = 5, min_trend: float = 0.6,
                 min_rel_change: float = 0.05, **kw):
        super().__init__(**kw)
        self.pairs = pairs or AsymmetryConfig().pairs
        self.window = int(window)
        self.min_trend = min_trend
        self.min_rel_change = min_rel_change
        self.history: dict[str, list[float]] = {}

    def check(self, trainer, pl_module, hook):
        for pair in self.pairs:
            for key in pair:
                v = logged(trainer, key)
                if v is not None and math.isfinite(v):
                    self.history.setdefault(key, []).append(v)
        for fwd, inv in self.pairs:
            a, b = self.history.get(fwd, [])[-self.window:], self.history.get(inv, [])[-self.window:]
            if len(a) < self.window or len(b) < self.window:
                continue
            ta = trend(a, self.min_trend, self.min_rel_change)
            tb = trend(b, self.min_trend, self.min_rel_change)
            if ta * tb == -1:
                better, worse = (fwd, inv) if ta < 0 else (inv, fwd)
                wv = self.history[worse][-self.window:]
                bv = self.history[better][-self.window:]
                return (
                    (f"over the last {self.window} evaluations {better} improved "
                    f"({bv[0]:.4g} -> {bv[-1]:.4g}) while {worse} got worse ({wv[0]:.4g} -> {wv[-1]:.4g})"),
                    {f"{better}_first": bv[0], f"{better}_last": bv[-1],
                     f"{worse}_first": wv[0], f"{worse}_last": wv[-1]},
                )
        return None


class GradNormMonitor(RedFlagMonitor):
    """Gradient L2 norm above ``max_norm``.

    Reads the trainer's logged ``train/grad_norm`` (the norm before clipping, as the contract
    asks) when it is logged; otherwise computes the norm over all parameters in
    ``on_before_optimizer_step`` (before Lightning's own clipping).
    """

    name = "grad_norm"
    hooks = ("before_optimizer_step", "train_batch_end")

    def __init__(self, max_norm: float = DEFAULTS.grad_norm_max, metric: str = mn.TRAIN_GRAD_NORM,
                 spike_factor: float = DEFAULTS.grad_spike_factor, **kw):
        super().__init__(**kw)
        self.max_norm = float(max_norm)
        self.metric = metric
        self.thresholds = replace(DEFAULTS, grad_norm_max=self.max_norm,
                                  grad_spike_factor=float(spike_factor))
        self.history: list[float] = []
        self._use_metric = False

    def check(self, trainer, pl_module, hook):
        if hook == "train_batch_end":
            g = logged(trainer, self.metric)
            if g is None:
                return None
        else:
            g = grad_norm(pl_module)
        self.history.append(g)
        v = rules.gradient_explosion(self.history, self.thresholds)
        if rules.violates_now(v, len(self.history)):
            return v.newest.message, v.newest.values
        return None

    def _evaluate(self, trainer, pl_module, hook):
        if hook == "train_batch_end" and logged(trainer, self.metric) is not None:
            self._use_metric = True
        if (hook == "train_batch_end") != self._use_metric:
            return
        super()._evaluate(trainer, pl_module, hook)


class LossRatioMonitor(RedFlagMonitor):
    """Validation loss over the mean training loss since the previous evaluation above
    ``max_ratio``."""

    name = "loss_ratio"
    hooks = ("train_batch_end", "validation_end")

    def __init__(self, max_ratio: float = DEFAULTS.overfit_ratio, train_metric: str = mn.TRAIN_LOSS,
                 val_metric: str = mn.VAL_LOSS, **kw):
        super().__init__(**kw)
        self.max_ratio = float(max_ratio)
        self.thresholds = replace(DEFAULTS, overfit_ratio=self.max_ratio)
        self.history: list[tuple[float, float]] = []
        self.train_metric = train_metric
        self.val_metric = val_metric
        self._train: list[float] = []

    def check(self, trainer, pl_module, hook):
        if hook == "train_batch_end":
            metrics = trainer.callback_metrics
            v = None
            keys = [f"{self.train_metric}_step", self.train_metric] + [
                k for k in metrics if mn.contract_name(k) == self.train_metric
                and not k.endswith("_epoch")]
            for key in keys:
                if key in metrics:
                    v = _as_float(metrics[key])
                    break
            if v is None:
                out = getattr(self, "_outputs", None)
                v = _as_float(out.get("loss") if isinstance(out, dict) else out)
            if v is not None and math.isfinite(v):
                self._train.append(v)
            return None
        val = logged(trainer, self.val_metric)
        if not self._train or val is None or not math.isfinite(val):
            return None
        train = float(np.mean(self._train))
        self._train = []  # next evaluation compares with the training loss since this one
        self.history.append((train, val))
        v = rules.loss_ratio(*zip(*self.history), self.thresholds)
        if rules.violates_now(v, len(self.history)):
            ratio = v.newest.values["ratio"]
            return ((f"{self.val_metric} {val:.4g} is {ratio:.3g}x the mean {self.train_metric} "
                    f"{train:.4g} (bound {self.max_ratio:g}x)"),
                    {self.val_metric: val, self.train_metric: train, "ratio": ratio})
        return None

    def _evaluate(self, trainer, pl_module, hook):
        # the training-batch hook only accumulates; it must not reset the patience counter
        if hook == "train_batch_end":
            if not trainer.sanity_checking:
                self.check(trainer, pl_module, hook)
            return
        super()._evaluate(trainer, pl_module, hook)


class QualityFloorMonitor(RedFlagMonitor):
    """A quality metric (higher is better, e.g. ``val/connectivity``) below its floor."""

    name = "quality_floor"

    def __init__(self, floors: dict[str, float] | None = None, **kw):
        super().__init__(**kw)
        self.floors = dict(QualityFloorConfig().floors if floors is None else floors)
        self.history: dict[str, list[float]] = {}

    def check(self, trainer, pl_module, hook):
        for key, floor in self.floors.items():
            v = logged(trainer, key)
            if v is None:
                continue
            hist = self.history.setdefault(key, [])
            hist.append(v)
            verdict = rules.quality_floor(hist, floor, DEFAULTS)
            if rules.violates_now(verdict, len(hist)):
                return f"{key} = {v:.4g} below its floor {floor:g}", {key: v, "floor": floor}
        return None


class AdapterDriftMonitor(RedFlagMonitor):
    """Mean FiLM gamma outside [low, high] (the adapter has drifted far from identity)."""

    name = "adapter_drift"
    hooks = ("train_epoch_end", "validation_end")

    def __init__(self, metric: str = mn.ADAPTER_GAMMA_MEAN, low: float = DEFAULTS.gamma_range[0],
                 high: float = DEFAULTS.gamma_range[1], **kw):
        super().__init__(**kw)
        self.metric, self.low, self.high = metric, float(low), float(high)
        self.thresholds = replace(DEFAULTS, gamma_range=(self.low, self.high))
        self.history: list[float] = []

    def check(self, trainer, pl_module, hook):
        v = logged(trainer, self.metric)
        if v is None:
            return None
        self.history.append(v)
        verdict = rules.adapter_drift(self.history, self.thresholds)
        if rules.violates_now(verdict, len(self.history)):
            return (f"{self.metric} = {v:.4g} outside [{self.low:g}, {self.high:g}]",
                    {self.metric: v, "low": self.low, "high": self.high})
        return None


# --------------------------------------------------------------------------- checkpoints


def state_is_good(trainer) -> bool:
    """True unless a monitor stopped the run or a parameter of the model is non-finite."""
    import torch

    if stop_event(trainer) is not None:
        return False
    module = trainer.lightning_module
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class GuardedModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that never saves a broken state.

    Once a red-flag monitor has stopped the run, or when any parameter is NaN / inf, saving is
    skipped, so ``last.ckpt`` and the top-k files keep the last good state. Lightning writes each
    file atomically. Use it instead of ``ModelCheckpoint`` in every trainer.
    """

    def _save_topk_checkpoint(self, trainer, monitor_candidates) -> None:
        if state_is_good(trainer):
            super()._save_topk_checkpoint(trainer, monitor_candidates)
        else:
            log.warning("checkpoint skipped at step %d: broken state", trainer.global_step)

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        if state_is_good(trainer):
            super()._save_last_checkpoint(trainer, monitor_candidates)


# --------------------------------------------------------------------------- factory


def _coerce(config: MonitorConfig | dict | None) -> MonitorConfig:
    if config is None:
        return MonitorConfig()
    if isinstance(config, MonitorConfig):
        return config
    from moltune.common.config import from_dict

    return from_dict(MonitorConfig, dict(config), "monitors")


def default_monitors(config: MonitorConfig | dict | None = None,
                     run_dir: str | Path | None = None) -> list[RedFlagMonitor]:
    """The enabled red-flag monitors of ``config`` (defaults when None), writing to ``run_dir``."""
    cfg = _coerce(config)
    out: list[RedFlagMonitor] = []

    def common(c) -> dict[str, Any]:
        return {"action": c.action, "patience": c.patience, "start_epoch": c.start_epoch,
                "run_dir": run_dir}

    c = cfg.nonfinite
    if c.enabled:
        out.append(NonFiniteMonitor(c.metrics, c.check_gradients, c.max_nonfinite_fraction,
                                    c.train_patience, **common(c)))
    c = cfg.energy_explosion
    if c.enabled:
        out.append(EnergyExplosionMonitor(c.max_kT, c.directions, c.default_kT_kjmol, **common(c)))
    c = cfg.asymmetry
    if c.enabled:
        out.append(AsymmetryMonitor(c.pairs, c.window, c.min_trend, c.min_rel_change, **common(c)))
    c = cfg.grad_norm
    if c.enabled:
        out.append(GradNormMonitor(c.max_norm, spike_factor=c.spike_factor, **common(c)))
    c = cfg.loss_ratio
    if c.enabled:
        out.append(LossRatioMonitor(c.max_ratio, c.train_metric, c.val_metric, **common(c)))
    c = cfg.quality_floor
    if c.enabled:
        out.append(QualityFloorMonitor(c.floors, **common(c)))
    c = cfg.adapter_drift
    if c.enabled:
        out.append(AdapterDriftMonitor(c.metric, c.low, c.high, **common(c)))
    return out
