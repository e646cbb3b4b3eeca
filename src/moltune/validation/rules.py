"""One rule per check: pure functions of a metric history and one :class:`Thresholds` object.

A live monitor (:mod:`moltune.validation.monitors`) runs a rule on the history so far and fires
when the newest value is the violation; the diagnosis (:mod:`moltune.validation.diagnose`) runs
the same rule on the whole run. Thresholds are defined here once (a dataclass, also read from a
YAML file whose ``metrics:`` mapping assigns roles to columns, see :func:`load_thresholds`).

Each rule returns None (no violation) or a :class:`Violation` with the position of the first
violating value and the numbers that triggered it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from moltune.common.errors import InputFileError, InvalidInputError
from moltune.validation import metrics as mn


@dataclass
class Thresholds:
    """Every threshold of every check (the diagnosis prints them; monitors default to them)."""

    explosion_kT: float = 1.0e4
    perfect_reconstruction_nm: float = 1.0e-3
    default_kT_kjmol: float = 2.494  # 300 K, used only when no kT is logged
    min_rel_improvement: float = 0.02
    min_improvement_z: float = 3.0
    min_train_points: int = 5  # epochs
    min_train_steps: int = 100  # logged steps, when there are fewer epochs
    quality_floors: dict[str, float] = field(default_factory=lambda: {
        mn.VAL_CONNECTIVITY: 0.5, mn.VAL_VALIDITY: 0.5, mn.VAL_ACCEPTANCE_FLOW: 0.0})
    default_quality_floor: float = 0.0  # other higher-is-better metrics: drop rule only
    quality_drop: float = 0.3  # a quality metric losing 30% of its best has collapsed
    quality_decline: float = 0.15
    quality_min_best: float = 0.05  # the drop rule needs a best value at least this high
    min_val_samples: int = 10
    n_val_keys: tuple[str, ...] = ("n_val", "n_val_samples", "val_size", "num_val", "n_validation",
                                   "num_val_samples", "val_samples", "n_val_complexes",
                                   "val_fraction", "val_split", "validation_split")
    dataset_size_keys: tuple[str, ...] = ("n_samples", "dataset_size", "n_total", "num_samples")
    volatility_factor: float = 5.0
    volatility_span: float = 10.0
    volatility_jump: float = 2.0
    volatility_min_jumps: int = 2
    overfit_rise: float = 0.10
    overfit_ratio: float = 10.0  # also the loss_ratio monitor's bound
    overfit_threshold: float = 1.5
    overfit_min_rise: float = 0.01  # a rise above the best smaller than this is not an onset
    asymmetry_trend: float = 0.6
    asymmetry_rel_change: float = 0.05
    grad_norm_max: float = 1.0e4
    grad_spike_factor: float = 100.0  # x the run's own median so far
    grad_spike_min_history: int = 20
    gamma_range: tuple[float, float] = (0.1, 10.0)
    max_nonfinite_fraction: float = 0.5
    min_evaluations: int = 3

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise InvalidInputError(f"threshold {f.name} = {v}: must be a finite number")
        if self.explosion_kT <= 0:
            raise InvalidInputError(f"threshold explosion_kT = {self.explosion_kT}: must be > 0")


DEFAULTS = Thresholds()


def load_thresholds(path: str | Path) -> tuple[Thresholds, dict[str, str]]:
    """Thresholds and metric-role overrides from a YAML file: top-level threshold keys (or under
    ``thresholds:``) and an optional ``metrics:`` mapping ``ROLE: COLUMN``."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path}: unreadable ({exc.__class__.__name__})") from exc
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: want a mapping of thresholds and/or metrics:")
    roles = data.pop("metrics", None) or {}
    if not isinstance(roles, dict):
        raise InvalidInputError(f"{path}: metrics: must map ROLE to COLUMN")
    values = data.pop("thresholds", None) or {}
    values = {**data, **values}
    known = {f.name: f for f in fields(Thresholds)}
    kwargs: dict[str, Any] = {}
    for k, v in values.items():
        if k not in known:
            raise InvalidInputError(f"{path}: unknown threshold {k!r}; known: {', '.join(known)}")
        default = getattr(DEFAULTS, k)
        if isinstance(default, tuple):
            v = tuple(v)
        elif isinstance(default, float) and isinstance(v, (int, float)) and not isinstance(v, bool):
            v = float(v)
        elif isinstance(default, (int, float, dict)) and not isinstance(v, type(default)):
            raise InvalidInputError(f"{path}: threshold {k} = {v!r}: want {type(default).__name__}")
        kwargs[k] = v
    return Thresholds(**kwargs), {str(k): str(v) for k, v in roles.items()}


@dataclass
class Violation:
    """A rule's verdict: ``at`` is the position of the first violating value in the history."""

    at: int
    values: dict[str, float]
    message: str
    positions: list[int] = field(default_factory=list)  # every violating value
    newest: Violation | None = None  # the last violation (values and message at ``last``)

    @property
    def last(self) -> int:
        return self.positions[-1] if self.positions else self.at


def _arr(x: Sequence[float]) -> np.ndarray:
    return np.asarray(list(x), dtype=float)


def energy_explosion(energy: Sequence[float], reference: Sequence[float], kT: Sequence[float],
                     t: Thresholds = DEFAULTS) -> Violation | None:
    """Mean energy of transformed samples more than ``explosion_kT`` kT above the reference mean
    (or non-finite), all kJ/mol; the three histories are aligned per evaluation."""
    e, r, k = _arr(energy), _arr(reference), _arr(kT)
    hits = []
    for i in range(len(e)):
        if not math.isfinite(e[i]):
            hits.append(Violation(i, {"energy_kjmol": float(e[i])}, f"energy is {e[i]}"))
            continue
        if not (math.isfinite(r[i]) and k[i] > 0):
            continue
        excess = (e[i] - r[i]) / k[i]
        if excess > t.explosion_kT:
            hits.append(Violation(i, {"energy_kjmol": float(e[i]), "reference_kjmol": float(r[i]),
                                      "kT_kjmol": float(k[i]), "excess_kT": float(excess)},
                                  f"mean energy {e[i]:.4g} kJ/mol is {excess:.3g} kT above the "
                                  f"reference mean {r[i]:.4g} kJ/mol (bound {t.explosion_kT:g} kT)"))
    return _collect(hits)


def gradient_explosion(grad_norm: Sequence[float], t: Thresholds = DEFAULTS) -> Violation | None:
    """Gradient L2 norm above ``grad_norm_max``, or more than ``grad_spike_factor`` times the
    run's own median so far (after ``grad_spike_min_history`` values)."""
    g = _arr(grad_norm)
    hits = []
    for i, v in enumerate(g):
        if not math.isfinite(v):
            continue
        if v > t.grad_norm_max:
            hits.append(Violation(i, {"grad_norm": float(v), "bound": t.grad_norm_max},
                                  f"gradient L2 norm {v:.4g} above bound {t.grad_norm_max:g}"))
        elif i >= t.grad_spike_min_history:
            prev = g[:i][np.isfinite(g[:i])]
            med = float(np.median(prev)) if len(prev) else math.nan
            if med > 0 and v > t.grad_spike_factor * med:
                hits.append(Violation(i, {"grad_norm": float(v), "median_so_far": med,
                                          "factor": float(v / med)},
                                      f"gradient L2 norm {v:.4g} is {v / med:.3g}x its median so "
                                      f"far {med:.3g} (bound {t.grad_spike_factor:g}x)"))
    return _collect(hits)


def quality_floor(values: Sequence[float], floor: float, t: Thresholds = DEFAULTS
                  ) -> Violation | None:
    """A higher-is-better quality metric below ``floor`` (or NaN). The diagnosis calls it a
    collapse only when the metric had reached the floor before."""
    v = _arr(values)
    hits = []
    best = -math.inf
    for i, x in enumerate(v):
        if math.isnan(x) or x < floor:
            hits.append(Violation(i, {"value": float(x), "floor": floor, "best_so_far": float(best)},
                                  f"{x:.4g} below its floor {floor:g} (best so far {best:.4g})"))
        if math.isfinite(x):
            best = max(best, float(x))
    return _collect(hits)


def adapter_drift(gamma_mean: Sequence[float], t: Thresholds = DEFAULTS) -> Violation | None:
    """Mean FiLM gamma outside ``gamma_range``."""
    lo, hi = t.gamma_range
    return _collect([Violation(i, {"gamma_mean": float(x), "low": lo, "high": hi},
                               f"{x:.4g} outside [{lo:g}, {hi:g}]")
                     for i, x in enumerate(_arr(gamma_mean))
                     if math.isfinite(x) and not (lo <= x <= hi)])


def loss_ratio(train: Sequence[float], val: Sequence[float], t: Thresholds = DEFAULTS
               ) -> Violation | None:
    """Validation loss over training loss (aligned per evaluation) above ``overfit_ratio``
    (positive losses only; a ratio of negative log-likelihoods means nothing)."""
    tr, va = _arr(train), _arr(val)
    hits = []
    for i in range(min(len(tr), len(va))):
        if math.isfinite(tr[i]) and math.isfinite(va[i]) and tr[i] > 0 and va[i] > 0:
            ratio = va[i] / tr[i]
            if ratio > t.overfit_ratio:
                hits.append(Violation(i, {"val": float(va[i]), "train": float(tr[i]),
                                          "ratio": float(ratio)},
                                      f"validation loss {va[i]:.4g} is {ratio:.3g}x the training "
                                      f"loss {tr[i]:.4g} (bound {t.overfit_ratio:g}x)"))
    return _collect(hits)


def nonfinite(values: Sequence[float], t: Thresholds = DEFAULTS) -> Violation | None:
    """A NaN / inf value."""
    return _collect([Violation(i, {"value": float(x)}, f"value is {x}")
                     for i, x in enumerate(_arr(values)) if not math.isfinite(x)])


def violates_now(violation: Violation | None, history_length: int) -> bool:
    """True when the newest value of the history violates (what a monitor fires on)."""
    return violation is not None and violation.last == history_length - 1


def _collect(hits: list[Violation]) -> Violation | None:
    if not hits:
        return None
    first = hits[0]
    first.positions = [h.at for h in hits]
    first.newest = hits[-1]
    return first
