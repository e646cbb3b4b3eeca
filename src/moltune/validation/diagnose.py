"""Diagnosis of a finished (or stopped) run from what it logged: findings ranked by severity.

Every finding comes from one rule function below (``rule_*``), with its thresholds in
:class:`~moltune.validation.rules.Thresholds` (``DiagnoseConfig``); the checks a monitor also
makes (energy explosion, gradient norm, quality floor, adapter drift) call the same pure rule of
:mod:`moltune.validation.rules`. The log's columns are first resolved to contract names
(:mod:`moltune.validation.metrics`), and each finding's ``columns`` names the columns it read. A
rule returns a finding only together with the numbers that triggered
it. Ids and severities are documented in :mod:`moltune.validation.vocabulary`.

Rules (in vocabulary order):

- ``inverse_explosion`` / ``forward_explosion``: mean energy of the transformed samples of that
  direction more than ``explosion_kT`` kT above the reference mean, or non-finite, at any
  evaluation (evaluation ``metrics.json`` energies count too). Reconstruction RMSD below
  ``perfect_reconstruction_nm`` is reported as "looks perfect" - it proves invertibility only.
- ``quality_collapse``: a quality metric (``quality_floors``; higher is better) ends below its
  floor after having been above it, or loses more than ``quality_drop`` of a best value of at
  least ``quality_min_best`` (flow acceptance has floor 0: only the drop rule applies).
- ``quality_decline``: short of a collapse, a quality metric ends more than ``quality_decline``
  (relative) below its best (a slow slide, e.g. flow acceptance 0.68 -> 0.57 while the loss
  still looks fine).
- ``not_learning``: training loss (mean of the first vs the last tenth of the per-epoch values;
  per-step values when there are fewer than ``min_train_points`` epochs, and no verdict below
  ``min_train_steps`` steps) improves by less than ``min_rel_improvement`` relative AND by less
  than ``min_improvement_z`` standard errors (noise from successive differences) - losses with
  a large offset, like flow NLLs near -300, improve by little relative to their size. When the
  noise is so large that even a ``min_rel_improvement`` gain would sit below
  ``min_improvement_z`` standard errors (a diffusion loss over random timesteps, logged per
  step, in a short fine-tuning run), the run cannot tell: the finding is kept at low severity
  and says so, unless the learning rate is 0. A positive loss (bounded below by 0) that improves
  by less than ``min_rel_improvement`` is flagged even when the gain is beyond the noise (high:
  a learning rate too small to matter). A loss that became non-finite is ``nonfinite`` instead.
- ``nonfinite``: any logged value NaN / inf.
- ``adapter_drift``: ``adapter/gamma_mean`` outside ``gamma_range``.
- ``stopped_by_monitor``: ``stopped.json`` present.
- ``small_validation``: validation set size (config / hparams key in ``n_val_keys`` or the
  ``val/n_samples`` metric) below ``min_val_samples``; or validation loss zig-zags
  (median |second difference of log loss|) ``volatility_factor`` times more than training loss,
  spans more than ``volatility_span``x and jumps up by more than ``volatility_jump``x at least
  ``volatility_min_jumps`` times.
- ``overfitting``: validation loss rose more than ``overfit_rise`` (relative) above its best while
  training loss kept falling, or val/train ratio above ``overfit_ratio`` at the end. Downgraded
  to low when ``small_validation`` or ``quality_collapse`` holds (the validation signal is then
  not trustworthy, or the rise is the collapse's symptom) or a
  direction explodes (the rise is its symptom).
- ``direction_asymmetry``: over the run one direction's validation loss fell while the other's
  rose (Kendall tau and relative change, as the asymmetry monitor).
- ``gradient_explosion``: ``train/grad_norm`` above ``grad_norm_max`` or ``grad_spike_factor``
  times its own median so far.
- ``monitor_warnings``: warnings in ``redflags.json``.
- ``no_validation`` / ``short_run``: nothing or too little to judge generalisation / trends.
- ``healthy``: none of the above at severity medium or worse.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moltune.common.io import write_text
from moltune.validation import logs, rules
from moltune.validation import metrics as mn
from moltune.validation.monitors import kendall_trend, trend
from moltune.validation.overfitting import detect_overfitting
from moltune.validation.rules import Thresholds
from moltune.validation.serialize import write_strict_json
from moltune.validation.vocabulary import FINDINGS, SEVERITIES, sort_key

DIRECTIONS = mn.DIRECTIONS
QUALITY_PLOT_METRICS = (mn.VAL_CONNECTIVITY, mn.VAL_VALIDITY, mn.VAL_QED, mn.VAL_SA,
                        mn.VAL_ACCEPTANCE_FLOW, mn.VAL_ACCEPTANCE_NAIVE)
DiagnoseConfig = Thresholds  # the thresholds of every rule, defined once in rules.py


@dataclass
class Finding:
    id: str
    severity: str
    title: str
    evidence: dict[str, Any]
    causes: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)
    plot: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # contract name -> the log's column

    def __post_init__(self) -> None:
        if self.id not in FINDINGS:
            raise ValueError(f"finding id {self.id!r} not in the vocabulary")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} not in {SEVERITIES}")
        if self.id != "healthy" and not self.evidence:
            raise ValueError(f"finding {self.id!r} without evidence")


@dataclass
class Diagnosis:
    run: str
    summary: dict[str, Any]
    findings: list[Finding]
    plots: dict[str, str]
    config: DiagnoseConfig
    metrics_read: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [f.id for f in self.findings]

    def as_json(self) -> list[dict[str, Any]]:
        return [asdict(f) for f in self.findings]


# --------------------------------------------------------------------------- helpers


class _Ctx:
    """What the rules see: the run, its per-evaluation series (indexed by epoch, or by step when
    validation ran every N steps: ``unit``) and the findings so far."""

    def __init__(self, run: logs.RunData, cfg: DiagnoseConfig):
        self.run, self.cfg = run, cfg
        self.m = run.metrics
        self.found: dict[str, Finding] = {}
        self._cache: dict[str, pd.Series] = {}
        self.unit = logs.timeline(run.metrics)  # evaluations per "epoch", or every N "step"s

    def es(self, name: str) -> pd.Series:
        if name not in self._cache:
            self._cache[name] = logs.series(self.m, name, self.unit)
        return self._cache[name]

    def has(self, name: str) -> bool:
        return logs.has_metric(self.m, name)

    def loss(self, split: str, kind: str = "loss") -> pd.Series:
        return self.es(f"{split}/{kind}")

    def quality_floors(self) -> dict[str, float]:
        """Higher-is-better validation quality metrics logged, with their floors (configured
        ones first; any other accuracy-like metric gets ``default_quality_floor``)."""
        floors = {k: v for k, v in self.cfg.quality_floors.items() if self.has(k)}
        res = self.run.resolution
        for name, direction in (res.quality.items() if res is not None else []):
            if direction == "higher" and name not in floors and self.has(name):
                floors[name] = self.cfg.default_quality_floor
        return floors


def _f(x: Any) -> Any:
    """JSON-friendly number (floats rounded to 6 significant digits)."""
    if x is None:
        return None
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return x
    if not math.isfinite(v):
        return str(v)
    return float(f"{v:.6g}")


def _finite(s: pd.Series) -> pd.Series:
    return s[np.isfinite(s.to_numpy(dtype=float))] if len(s) else s


def _first_epoch(s: pd.Series, cond: Callable[[float], bool]) -> int | None:
    for e, v in s.items():
        if cond(float(v)):
            return int(e)
    return None


def _setting(run: logs.RunData, keys: tuple[str, ...]) -> tuple[str, float] | None:
    for k, v in run.settings.items():
        if k.split("/")[-1] in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
            return k, float(v)
    return None


def _val_size(ctx: _Ctx) -> tuple[str, float] | None:
    """(source, validation samples); a fraction (``val_size: 0.25``) times a logged data-set size
    when there is one, else ``(source + " (fraction)", fraction)``."""
    ns = _finite(ctx.es(mn.VAL_N_SAMPLES))
    if len(ns):
        return mn.VAL_N_SAMPLES, float(ns.iloc[-1])
    n = _setting(ctx.run, ctx.cfg.n_val_keys)
    if n is None and ctx.cfg.n_val_keys:  # any other key that names a validation size
        n = next(((k, float(v)) for k, v in ctx.run.settings.items() if mn.is_val_size_key(k)
                  and isinstance(v, (int, float)) and not isinstance(v, bool)), None)
    if n is None or n[1] <= 0 or n[1] >= 1:
        return n
    total = _setting(ctx.run, ctx.cfg.dataset_size_keys)
    if total is not None and total[1] >= 1:
        return f"{n[0]} x {total[0]}", n[1] * total[1]
    return f"{n[0]} (fraction)", n[1]


def _rel(a: float, b: float) -> float:
    """Relative change from a to b."""
    return (b - a) / max(abs(a), 1e-12)


def _zigzag(s: pd.Series) -> float:
    v = _finite(s).to_numpy(dtype=float)
    v = v[v > 0]
    if len(v) < 4:
        return math.nan
    return float(np.median(np.abs(np.diff(np.log(v), n=2))))


# --------------------------------------------------------------------------- rules


def rule_explosion(ctx: _Ctx, direction: str) -> Finding | None:
    cfg = ctx.cfg
    e_key, ref_key, kt_key, _ = DIRECTIONS[direction]
    energy, ref, kt = ctx.es(e_key), ctx.es(ref_key), ctx.es(kt_key)
    eval_keys = {k: v for k, v in ctx.run.evaluation.items()
                 if "energy" in k.lower() and direction in k.lower() and "ref" not in k.lower()
                 and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not len(energy) and not eval_keys:
        return None
    kt_value = float(_finite(kt).iloc[-1]) if len(_finite(kt)) else cfg.default_kT_kjmol
    ref_value = float(_finite(ref).iloc[-1]) if len(_finite(ref)) else math.nan
    ev: dict[str, Any] = {}
    fired = False
    if len(energy):
        ref_al = ref.reindex(energy.index).ffill().bfill() if len(ref) else pd.Series(
            ref_value, index=energy.index)
        kt_al = kt.reindex(energy.index).ffill().bfill() if len(kt) else pd.Series(
            kt_value, index=energy.index)
        excess = (energy - ref_al) / kt_al
        fin = _finite(excess)
        verdict = rules.energy_explosion(energy.to_numpy(dtype=float), ref_al.to_numpy(dtype=float),
                                         kt_al.to_numpy(dtype=float), cfg)
        nonfinite = energy[~np.isfinite(energy.to_numpy(dtype=float))]
        ev |= {f"{e_key}_first": energy.iloc[0], f"{e_key}_max": _finite(energy).max()
               if len(_finite(energy)) else math.nan, f"{e_key}_last": energy.iloc[-1],
               ref_key: ref_value, kt_key: kt_value}
        if len(fin):
            ev["excess_kT_max"] = fin.max()
            ev[f"{ctx.unit}_of_max"] = int(fin.idxmax())
            above = [p for p in (verdict.positions if verdict else [])
                     if math.isfinite(float(energy.iloc[p]))]
            if above:
                fired = True
                ev[f"first_{ctx.unit}_above_bound"] = int(energy.index[above[0]])
        if len(nonfinite):
            fired = True
            ev["nonfinite_evaluations"] = len(nonfinite)
            ev[f"first_nonfinite_{ctx.unit}"] = int(nonfinite.index[0])
    ref_word = "target" if direction == "forward" else "source"
    for k, v in eval_keys.items():
        ev[k] = v
        # an evaluation's own reference (e.g. mean_energy_kjmol/source beside .../inverse) first
        sibling = ctx.run.evaluation.get(k.lower().replace(direction, ref_word))
        ref_k = float(sibling) if isinstance(sibling, (int, float)) else ref_value
        if not math.isfinite(ref_value) and math.isfinite(ref_k):
            ev[f"evaluation_reference_{ref_word}_kjmol"] = ref_k
        if rules.energy_explosion([v], [ref_k], [kt_value], cfg) is not None:
            fired = True
            if math.isfinite(v) and math.isfinite(ref_k):
                ev[f"{k}_excess_kT"] = (v - ref_k) / kt_value
    if not fired:
        return None
    rmsd = _finite(ctx.es("val/reconstruction_rmsd_nm"))
    perfect = False
    if len(rmsd):
        ev["val/reconstruction_rmsd_nm_last"] = rmsd.iloc[-1]
        ev["val/reconstruction_rmsd_nm_max"] = rmsd.max()
        perfect = rmsd.max() < cfg.perfect_reconstruction_nm
    for split in ("train", "val"):
        for kind in ("loss_forward", "loss_inverse"):
            s = ctx.loss(split, kind)
            if len(s):
                ev[f"{split}/{kind}_first"] = s.iloc[0]
                ev[f"{split}/{kind}_last"] = s.iloc[-1]
    other = "inverse" if direction == "forward" else "forward"
    o_e, o_ref, o_kt, _ = DIRECTIONS[other]
    if ctx.has(o_e) and ctx.has(o_ref):
        oe = _finite(ctx.es(o_e))
        if len(oe):
            okt = _finite(ctx.es(o_kt))
            okt_v = float(okt.iloc[-1]) if len(okt) else cfg.default_kT_kjmol
            ev[f"{other}_excess_kT_last"] = (oe.iloc[-1] - _finite(ctx.es(o_ref)).iloc[-1]) / okt_v
    peak = ev.get(f"{e_key}_max", math.nan)
    evals = [v for k, v in eval_keys.items()]
    peak_all = max([p for p in [peak] + evals if isinstance(p, float) and math.isfinite(p)],
                   default=math.nan)
    arrow = "T^-1(y)" if direction == "inverse" else "T(x)"
    ref_shown = ev.get(f"evaluation_reference_{ref_word}_kjmol", ref_value)
    title = (f"{direction.capitalize()} direction explodes: mean energy of {arrow} reaches "
             f"{peak_all:.3g} kJ/mol (reference {ref_shown:.4g} kJ/mol, kT {kt_value:.3g} kJ/mol)")
    if f"first_nonfinite_{ctx.unit}" in ev:
        title += f", non-finite from {ctx.unit} {ev[f'first_nonfinite_{ctx.unit}']}"
    if perfect:
        title += (f", while reconstruction RMSD is {ev['val/reconstruction_rmsd_nm_last']:.2g} nm "
                  "(looks perfect, proves only invertibility)")
    causes = [
        (f"the {direction} direction is not (or too weakly) trained: the loss only constrains the "
        f"{other} direction, so an exactly invertible map can shrink volume one way and blow up "
        "the other"),
        "a missing or wrongly signed log-det term lets the map collapse volume",
        "unbounded scale outputs (exp of an unconstrained scale) in the coupling layers",
        "learning rate too high once the map becomes ill-conditioned",
    ]
    steps = [
        (f"train both directions (add or up-weight the {direction} energy/KL term) and check the "
        "log-det sign"),
        ("bound the scales (tanh / soft clamp) and regularise energies (moltune.physics.energy."
        "regularize_energy)"),
        "judge checkpoints on energies of transformed samples, not on reconstruction RMSD",
        ("resume from the last good checkpoint with a lower learning rate; keep the "
        "energy_explosion monitor on action: stop"),
    ]
    return Finding(f"{direction}_explosion", "critical", title, ev, causes, steps, "energies")


def rule_quality_collapse(ctx: _Ctx) -> Finding | None:
    cfg = ctx.cfg
    worst: Finding | None = None
    for metric, floor in ctx.quality_floors().items():
        s = ctx.es(metric)
        if len(s) < 2:
            continue
        v = s.fillna(0.0)
        best_epoch = int(v.idxmax())
        best, last = float(v.max()), float(v.iloc[-1])
        below = rules.violates_now(rules.quality_floor(v.to_numpy(), floor, cfg), len(v)) \
            and best >= floor  # it fell below after reaching it
        dropped = best >= cfg.quality_min_best and last < best * (1 - cfg.quality_drop)
        if not (below or dropped):
            continue
        u = ctx.unit
        ev: dict[str, Any] = {f"{metric}_best": best, f"best_{u}": best_epoch, f"{metric}_last": last,
                              f"last_{u}": int(v.index[-1]), "floor": floor}
        first_below = _first_epoch(v.loc[best_epoch:], lambda x, f=floor: x < f)
        if first_below is not None:
            ev[f"first_{u}_below_floor"] = first_below
        zero = _first_epoch(v, lambda x: x == 0)
        if zero is not None:
            ev[f"first_{u}_at_zero"] = zero
        loss_note = ""
        for split in ("train", "val"):
            ls = _finite(ctx.loss(split))
            if len(ls) and best_epoch in ls.index:
                ev[f"{split}/loss_at_best_{u}"] = ls.loc[best_epoch]
                ev[f"{split}/loss_last"] = ls.iloc[-1]
        tl = _finite(ctx.loss("train"))
        if len(tl) >= 2:
            ev["train/loss_first"] = tl.iloc[0]
            ev["train/loss_last"] = tl.iloc[-1]
            if tl.iloc[-1] < tl.iloc[0]:
                loss_note = f" while train loss fell {tl.iloc[0]:.3g} -> {tl.iloc[-1]:.3g}"
        title = (f"{metric} collapsed from {best:.3g} ({u} {best_epoch}) to {last:.3g} "
                 f"({u} {int(v.index[-1])}){loss_note}")
        causes = [
            ("the loss does not measure this quality: the model optimises something the metric "
            "does not reward (e.g. per-atom positions without bonds)"),
            "an adapter / fine-tuning step moved the model off the pretrained manifold",
            "learning rate too high for fine-tuning",
        ]
        steps = [
            f"select checkpoints on {metric}, not on loss (best was {u} {best_epoch})",
            f"keep the quality_floor monitor for {metric} on action: stop",
            "lower the learning rate or regularise towards the pretrained model / identity adapter",
            "compare against controls (pretrained, identity adapter) with moltune.validation.controls",
        ]
        f = Finding("quality_collapse", "critical" if last < floor else "high", title, ev, causes,
                    steps, "quality")
        if worst is None or sort_key(f.id, f.severity) < sort_key(worst.id, worst.severity):
            worst = f
    return worst


def rule_quality_decline(ctx: _Ctx) -> Finding | None:
    cfg = ctx.cfg
    if rule_quality_collapse(ctx) is not None:
        return None  # the stronger finding covers it
    for metric in ctx.quality_floors():
        v = ctx.es(metric).fillna(0.0)
        if len(v) < 2:
            continue
        best, last = float(v.max()), float(v.iloc[-1])
        if best < cfg.quality_min_best or last >= best * (1 - cfg.quality_decline):
            continue
        u, best_at = ctx.unit, int(v.idxmax())
        ev = {f"{metric}_best": best, f"best_{u}": best_at, f"{metric}_last": last,
              f"last_{u}": int(v.index[-1]), "relative_drop": 1 - last / best}  # fmt: skip
        title = (f"{metric} slid from its best {best:.3g} ({u} {best_at}) to {last:.3g} "
                 f"({u} {int(v.index[-1])}), {1 - last / best:.0%} lower")  # fmt: skip
        causes = [
            "overfitting to the training samples (few or correlated samples for the model's size)",
            "learning rate still too high late in the run",
        ]
        steps = [
            f"use the best checkpoint by {metric} ({u} {best_at}), not the last one",
            "more (independent) training samples, weight decay, or a smaller model",
            f"stop early on {metric} (the quality_floor / early-stopping callbacks)",
        ]
        return Finding("quality_decline", "medium", title, ev, causes, steps, "quality")
    return None


def rule_not_learning(ctx: _Ctx) -> Finding | None:
    cfg = ctx.cfg
    raw = logs.step_series(ctx.m, "train/loss")
    if len(raw) and not np.isfinite(raw.to_numpy(dtype=float)).all():
        return None  # the loss diverged (the nonfinite finding), which is not "not learning"
    steps_s = _finite(raw)
    epoch_s = _finite(ctx.loss("train"))
    # epoch means average out batch-to-batch noise; steps only when there are too few epochs
    if len(epoch_s) >= cfg.min_train_points:
        s = epoch_s
    elif len(steps_s) >= cfg.min_train_steps:
        s = steps_s
    else:
        return None  # too short to tell (short_run says so)
    v = s.to_numpy(dtype=float)
    k = max(1, len(v) // 10)
    head, tail = float(np.mean(v[:k])), float(np.mean(v[-k:]))
    improvement = -_rel(head, tail)
    # noise of one value from successive differences; z: the improvement in standard errors
    noise = float(np.std(np.diff(v), ddof=1) / math.sqrt(2)) if len(v) > 2 else math.nan
    se = noise * math.sqrt(2 / k)
    z = (head - tail) / se if se > 0 else (math.inf if head > tail else 0.0)
    # a loss bounded below by 0 (MSE, cross-entropy) must improve by a relative amount: a steady
    # 0.3% gain is a learning rate too small to matter, however far beyond the noise; a loss
    # with an offset (an NLL near -300) is judged in standard errors only
    positive = bool((v > 0).all())
    if improvement >= cfg.min_rel_improvement or (z >= cfg.min_improvement_z and not positive):
        return None
    resolved_small = z >= cfg.min_improvement_z
    ev: dict[str, Any] = {"train/loss_start_mean": head, "train/loss_end_mean": tail,
                          "relative_improvement": improvement, "min_rel_improvement":
                          cfg.min_rel_improvement, "improvement_z": z, "min_improvement_z":
                          cfg.min_improvement_z, "n_points": len(v), "train/loss_min": float(v.min())}
    lr = _setting(ctx.run, ("lr", "learning_rate", "learning-rate"))
    logged_lr = _finite(logs.step_series(ctx.m, mn.TRAIN_LR))
    if lr is None and len(logged_lr):
        lr = (mn.TRAIN_LR, float(np.median(logged_lr)))
    if lr is not None:
        ev[lr[0]] = lr[1]
    gn = _finite(logs.step_series(ctx.m, "train/grad_norm"))
    if len(gn):
        ev["train/grad_norm_median"] = float(np.median(gn))
    title = (f"Training loss did not improve: {head:.4g} -> {tail:.4g} "
             f"({improvement:+.1%} over {len(v)} logged values)")
    smallest = cfg.min_rel_improvement * abs(head)  # the smallest improvement that would count
    ev["resolvable_improvement"] = cfg.min_improvement_z * se
    if lr is not None and lr[1] == 0:
        title += f"; learning rate is 0 ({lr[0]})"
    elif resolved_small and improvement > 0:
        title = (f"Training loss improved only {improvement:.2%} over the run ({head:.4g} -> "
                 f"{tail:.4g}, {len(v)} logged values): steady but too small to matter")
        if lr is not None:
            title += f" (learning rate {lr[1]:.3g})"
        causes = ["learning rate far too small (the loss moves, but by a fraction of a percent)",
                  "most parameters frozen or a tiny learning-rate multiplier on them",
                  "a schedule that decays the learning rate to ~0 at the start"]
        steps = ["raise the learning rate by 10-100x (an LR range test finds it)",
                 "check which parameters the optimizer holds and their learning rates"]
        return Finding("not_learning", "high", title, ev, causes, steps, "loss")
    elif cfg.min_improvement_z * se > smallest:
        title = (f"Training loss too noisy to tell whether it improved: {head:.4g} -> {tail:.4g}"
                 f" over {len(v)} logged values; a {cfg.min_rel_improvement:.0%} gain "
                 f"({smallest:.3g}) is below {cfg.min_improvement_z:g} standard errors "
                 f"({cfg.min_improvement_z * se:.3g})")  # fmt: skip
        causes = ["per-step losses of a noisy objective (e.g. diffusion over random timesteps) "
                  "in a run too short to average the noise out",
                  "a fine-tuning start that is already near the optimum (an identity-initialised "
                  "adapter): the loss has little to gain"]  # fmt: skip
        steps = ["judge the run by its validation quality metrics instead",
                 "log epoch means or a smoothed loss, or train longer before judging"]
        return Finding("not_learning", "low", title, ev, causes, steps, "loss")
    causes = ["learning rate zero or far too small",
              "parameters frozen (requires_grad False) or not passed to the optimizer",
              "loss detached from the parameters (e.g. computed under no_grad or on .detach())",
              "gradients vanish (saturated activations, zero-initialised last layer)"]
    steps = ["check the learning rate and which parameters the optimizer holds",
             "overfit a single batch: the loss must go to ~0 within a few hundred steps",
             "log train/grad_norm; a zero norm means no gradient reaches the parameters"]
    return Finding("not_learning", "critical", title, ev, causes, steps, "loss")


def rule_nonfinite(ctx: _Ctx) -> Finding | None:
    m = ctx.m
    bad = m[~np.isfinite(m["value"].to_numpy(dtype=float))]
    if not len(bad):
        return None
    ev: dict[str, Any] = {}
    for metric, rows in bad.groupby("metric", sort=False):
        ev[f"{metric}:count"] = len(rows)
        ev[f"{metric}:first_step"] = int(rows["step"].iloc[0])
        if math.isfinite(rows["epoch"].iloc[0]):
            ev[f"{metric}:first_epoch"] = int(rows["epoch"].iloc[0])
    first = bad.iloc[0]
    title = (f"Non-finite values in {bad['metric'].nunique()} metric(s); first: {first['metric']} = "
             f"{first['value']} at step {int(first['step'])}")
    causes = ["an exploding direction or energy (see other findings)",
              "division by zero / log of zero in the loss", "learning rate too high"]
    steps = ["keep the nonfinite monitor on action: stop so the last good checkpoint survives",
             "resume from the last good checkpoint with a lower learning rate or gradient clipping"]
    return Finding("nonfinite", "critical", title, ev, causes, steps, "loss")


def rule_adapter_drift(ctx: _Ctx) -> Finding | None:
    lo, hi = ctx.cfg.gamma_range
    s = _finite(ctx.es("adapter/gamma_mean"))
    if not len(s):
        return None
    out = s[(s < lo) | (s > hi)]
    if not len(out):
        return None
    ev = {"adapter/gamma_mean_first": s.iloc[0], "adapter/gamma_mean_last": s.iloc[-1],
          f"first_{ctx.unit}_outside": int(out.index[0]), "low": lo, "high": hi}
    return Finding("adapter_drift", "high",
                   f"FiLM gamma mean left [{lo:g}, {hi:g}]: {s.iloc[-1]:.3g} at {ctx.unit} "
                   f"{int(s.index[-1])}",
                   ev, ["adapter learning rate too high", "no regularisation towards identity"],
                   ["regularise gamma towards 1 and beta towards 0", "lower the adapter learning rate"],
                   "quality")


def rule_stopped(ctx: _Ctx) -> Finding | None:
    st = ctx.run.stopped
    if not st:
        return None
    ev = {"monitor": st.get("monitor"), "step": st.get("step"), "epoch": st.get("epoch")}
    ev |= {f"value:{k}": v for k, v in (st.get("values") or {}).items()}
    if st.get("last_good_checkpoint"):
        ev["last_good_checkpoint"] = st["last_good_checkpoint"]
    return Finding("stopped_by_monitor", "high",
                   f"Stopped by red-flag monitor {st.get('monitor')} at step {st.get('step')} "
                   f"(epoch {st.get('epoch')}): {st.get('message')}", ev,
                   ["see the other findings for why the monitor fired"],
                   ["resume from the last good checkpoint after fixing the cause"], None)


def rule_small_validation(ctx: _Ctx) -> Finding | None:
    cfg = ctx.cfg
    ev: dict[str, Any] = {}
    reasons = []
    n = _val_size(ctx)
    if n is not None and n[1] < 1 and "fraction" in n[0]:
        ev["validation_fraction"] = n[1]
        ev["source"] = n[0].split(" ")[0]
        n = None  # a fraction of an unknown data set is no sample count
    if n is not None:
        ev["n_validation_samples"] = n[1]
        ev["source"] = n[0]
        if n[1] < cfg.min_val_samples:
            reasons.append(f"{int(n[1])} validation sample(s) (< {cfg.min_val_samples})")
    val, train = ctx.loss("val"), ctx.loss("train")
    zv, zt = _zigzag(val), _zigzag(train)
    fv = _finite(val)
    if math.isfinite(zv) and len(fv):
        fvp = fv[fv > 0]
        span = float(fvp.max() / fvp.min()) if len(fvp) else math.nan
        ev |= {"val/loss_min": fv.min(), "val/loss_max": fv.max(), "val_span_max_over_min": span,
               "val_zigzag": zv, "train_zigzag": zt}
        v = fvp.to_numpy(dtype=float)
        jumps = int((np.diff(np.log(v)) > math.log(cfg.volatility_jump)).sum()) if len(v) > 1 else 0
        ev["val_jumps_over_factor"] = jumps
        if (math.isfinite(zt) and zv > cfg.volatility_factor * max(zt, 1e-12)
                and span > cfg.volatility_span and jumps >= cfg.volatility_min_jumps):
            factor = zv / max(zt, 1e-12)
            shown = "over 1000x" if factor > 1000 else f"{factor:.3g}x"
            reasons.append(f"validation loss swings {fv.min():.4g}..{fv.max():.4g} "
                           f"(zig-zag {shown} the training loss's)")
    if not reasons:
        return None
    causes = ["the validation split holds too few samples to estimate the loss",
              "one unusual validation example dominates the average"]
    steps = [f"validate on at least {cfg.min_val_samples} (better 50+) held-out samples",
             "report validation with a confidence interval (bootstrap over samples)",
             "until then, do not select checkpoints or stop early on validation loss"]
    return Finding("small_validation", "high", "Validation set too small to trust: " +
                   "; ".join(reasons), ev, causes, steps, "loss")


def rule_overfitting(ctx: _Ctx) -> Finding | None:
    cfg = ctx.cfg
    train, val = _finite(ctx.loss("train")), _finite(ctx.loss("val"))
    common = val.index.intersection(train.index)
    if len(common) < cfg.min_evaluations:
        return None
    train, val = train.loc[common], val.loc[common]
    best_epoch = int(val.idxmin())
    best, last = float(val.min()), float(val.iloc[-1])
    rise = _rel(best, last)
    train_drop = -_rel(float(train.loc[best_epoch]), float(train.iloc[-1]))
    positive = bool((train > 0).all() and (val > 0).all())
    ratio_last = float(val.iloc[-1] / train.iloc[-1]) if positive else math.nan
    # the rise must stand out of the validation loss's own noise (robust, from second
    # differences: a noisy but healthy run's last value sits above its luckiest minimum)
    v = val.to_numpy(dtype=float)
    d2 = np.diff(v, n=2)
    noise = (1.4826 * float(np.median(np.abs(d2 - np.median(d2)))) / math.sqrt(6)
             if len(d2) >= 3 else 0.0)
    k = max(1, min(3, len(v) // 4))
    tail = float(np.mean(v[-k:]))
    standout = (tail - best) > 3.0 * noise
    diverging = rise > cfg.overfit_rise and train_drop > 0.01 and standout
    ratio_high = positive and ratio_last > cfg.overfit_ratio
    if not (diverging or ratio_high):
        return None
    u = ctx.unit
    ev: dict[str, Any] = {"val/loss_best": best, f"best_{u}": best_epoch, "val/loss_last": last,
                          "val/loss_noise": noise,
                          "val_rise_from_best": rise, f"train/loss_at_best_{u}": train.loc[best_epoch],
                          "train/loss_last": train.iloc[-1], "train_drop_after_best": train_drop}
    if positive:
        ev["val_train_ratio_last"] = ratio_last
    ov = detect_overfitting(ctx.m, cfg.overfit_threshold, checkpoints=ctx.run.checkpoints)
    ev["first_overfit_epoch"] = ov.first_overfit_epoch
    ev["recommended_epoch"] = ov.recommended_epoch
    if u == "step":
        ev["first_overfit_step"] = ov.first_overfit_step
        ev["recommended_step"] = ov.recommended_step
    ev["overfit_threshold"] = cfg.overfit_threshold
    severity = "high"
    title = (f"Overfitting: validation loss rose from {best:.4g} ({u} {best_epoch}) to {last:.4g} "
             f"while training loss fell {train.loc[best_epoch]:.4g} -> {train.iloc[-1]:.4g}")
    if not diverging:
        title = f"Validation loss is {ratio_last:.3g}x the training loss at the end"
    if "small_validation" in ctx.found:
        severity = "low"
        title += " (not trustworthy: the validation set is too small)"
    elif {"inverse_explosion", "forward_explosion"} & set(ctx.found):
        severity = "low"
        title += " (likely a symptom of the exploding direction, not of overfitting)"
    elif "quality_collapse" in ctx.found:
        severity = "low"
        title += " (a symptom of the quality collapse, not overfitting)"
    causes = ["too little training data for the model's capacity", "too many epochs",
              "too little regularisation (weight decay, dropout, augmentation)"]
    steps = [(f"use the checkpoint of {u} {ev.get(f'recommended_{u}', best_epoch)} "
             "(`moltune runs overfitting RUN`)"),
             "add data or augmentation, regularise, or stop earlier on validation loss"]
    return Finding("overfitting", severity, title, ev, causes, steps, "loss")


def rule_asymmetry(ctx: _Ctx) -> Finding | None:
    cfg = ctx.cfg
    fwd, inv = _finite(ctx.es("val/loss_forward")), _finite(ctx.es("val/loss_inverse"))
    if len(fwd) < cfg.min_evaluations or len(inv) < cfg.min_evaluations:
        return None
    tf = trend(list(fwd), cfg.asymmetry_trend, cfg.asymmetry_rel_change)
    ti = trend(list(inv), cfg.asymmetry_trend, cfg.asymmetry_rel_change)
    if tf * ti != -1:
        return None
    better, worse = ("forward", "inverse") if tf < 0 else ("inverse", "forward")
    b, w = (fwd, inv) if tf < 0 else (inv, fwd)
    ev = {f"val/loss_{better}_first": b.iloc[0], f"val/loss_{better}_last": b.iloc[-1],
          f"val/loss_{worse}_first": w.iloc[0], f"val/loss_{worse}_last": w.iloc[-1],
          f"kendall_tau_{better}": kendall_trend(list(b)), f"kendall_tau_{worse}": kendall_trend(list(w))}
    return Finding("direction_asymmetry", "medium",
                   f"{better} loss improved ({b.iloc[0]:.4g} -> {b.iloc[-1]:.4g}) while {worse} loss "
                   f"got worse ({w.iloc[0]:.4g} -> {w.iloc[-1]:.4g})", ev,
                   [f"the {worse} direction gets too little weight in the loss"],
                   [f"balance the two directions' loss weights; watch {worse} energies"], "loss")


def rule_grad(ctx: _Ctx) -> Finding | None:
    g = _finite(logs.step_series(ctx.m, mn.TRAIN_GRAD_NORM))
    v = rules.gradient_explosion(g.to_numpy(dtype=float), ctx.cfg)
    if v is None:
        return None
    med = float(np.median(g))
    ev = {"train/grad_norm_max": g.max(), "step_of_max": int(g.idxmax()),
          "train/grad_norm_median": med, "max_over_median": float(g.max() / med) if med > 0
          else math.inf, "first_violation_step": int(g.index[v.at]),
          "violations": len(v.positions), "bound": ctx.cfg.grad_norm_max,
          "spike_factor_bound": ctx.cfg.grad_spike_factor}
    return Finding("gradient_explosion", "medium",
                   f"Gradient norm reached {g.max():.3g} at step {int(g.idxmax())}, "
                   f"{g.max() / med:.3g}x the run's median {med:.3g} ({len(v.positions)} step(s) "
                   f"past the bound {ctx.cfg.grad_norm_max:g} or {ctx.cfg.grad_spike_factor:g}x "
                   "the median so far)", ev,
                   ["learning rate too high", "outlier batches (unnormalised inputs, bad labels)",
                    "ill-conditioned loss"],
                   ["clip gradients (gradient_clip_val)", "normalise inputs and look for outlier "
                    "samples at the spiking steps", "lower the learning rate"], "loss")


def rule_monitor_warnings(ctx: _Ctx) -> Finding | None:
    warns = [r for r in ctx.run.redflags if r.get("action") == "warn"]
    if not warns:
        return None
    ev: dict[str, Any] = {}
    for r in warns:
        ev[f"{r.get('monitor')}:count"] = ev.get(f"{r.get('monitor')}:count", 0) + 1
        ev.setdefault(f"{r.get('monitor')}:first_step", r.get("step"))
    return Finding("monitor_warnings", "low", f"{len(warns)} red-flag warning(s) during training: " +
                   ", ".join(sorted({str(r.get('monitor')) for r in warns})), ev,
                   ["see redflags.json for each warning's message"], ["read redflags.json"], None)


def rule_no_validation(ctx: _Ctx) -> Finding | None:
    if ctx.has("val/loss"):
        return None
    ev = {"metrics_logged": len(ctx.m["metric"].unique()), "val/loss_logged": False}
    res = ctx.run.resolution
    unassigned = list(res.unassigned_validation) if res is not None else []
    if unassigned:
        ev["validation_columns_not_assigned"] = ", ".join(unassigned)
        return Finding("no_validation", "medium",
                       f"Validation was logged ({', '.join(unassigned)}) but no column could be "
                       "assigned the validation-loss role: generalisation was not judged", ev,
                       ["several validation losses and none named plainly 'loss'"],
                       [f"name it: --metric val_loss={unassigned[0]} (or metrics: in a YAML "
                        "file given with --config)"], None)
    return Finding("no_validation", "medium", "No validation loss logged: generalisation cannot be "
                   "judged", ev, ["no validation dataloader, or val/loss logged under another name"],
                   ["log val/loss on a held-out set"], None)


def rule_short_run(ctx: _Ctx) -> Finding | None:
    if "nonfinite" in ctx.found:
        return None  # the run diverged: that, not its length, is why trends cannot be judged
    n = len(_finite(ctx.loss("val"))) or len(_finite(ctx.loss("train")))
    if n >= ctx.cfg.min_evaluations:
        return None
    return Finding("short_run", "medium", f"Only {n} evaluation(s): too few to judge trends",
                   {"evaluations": n, "min_evaluations": ctx.cfg.min_evaluations},
                   ["run stopped early or is still running"], ["train longer before judging"], None)


RULES: list[Callable[[_Ctx], Finding | None]] = [
    lambda c: rule_explosion(c, "inverse"),
    lambda c: rule_explosion(c, "forward"),
    rule_quality_collapse,
    rule_quality_decline,
    rule_not_learning,
    rule_nonfinite,
    rule_adapter_drift,
    rule_stopped,
    rule_small_validation,  # before overfitting: a tiny validation set downgrades it
    rule_overfitting,
    rule_asymmetry,
    rule_grad,
    rule_monitor_warnings,
    rule_no_validation,
    rule_short_run,
]


def _healthy(ctx: _Ctx) -> Finding:
    ev: dict[str, Any] = {}
    tl, vl = _finite(ctx.loss("train")), _finite(ctx.loss("val"))
    if len(tl):
        ev |= {"train/loss_first": tl.iloc[0], "train/loss_last": tl.iloc[-1],
               "train_relative_improvement": -_rel(tl.iloc[0], tl.iloc[-1])}
    if len(vl):
        ev |= {"val/loss_best": vl.min(), "val/loss_last": vl.iloc[-1], "evaluations": len(vl)}
    return Finding("healthy", "info", "Healthy: the training loss fell, validation followed it, and no "
                   "red flag was raised in what was logged", ev, [],
                   ["confirm with the task's own evaluation (energies, chemistry) and controls"], None)


# --------------------------------------------------------------------------- summary / plots


def summary(ctx: _Ctx) -> dict[str, Any]:
    s: dict[str, Any] = {"log": str(ctx.run.log_path), "evaluations indexed by": ctx.unit}
    m = ctx.m
    if len(m):
        s["steps"] = int(m["step"].max()) + 1
        ep = m["epoch"].dropna()
        if len(ep):
            s["epochs"] = int(ep.max()) + 1
    for split in ("train", "val"):
        for kind in ("loss", "loss_forward", "loss_inverse"):
            ser = ctx.loss(split, kind)
            if len(ser):
                fin = _finite(ser)
                s[f"{split}/{kind} first -> last"] = f"{_num(ser.iloc[0])} -> {_num(ser.iloc[-1])}"
                if len(fin):
                    s[f"{split}/{kind} best ({ctx.unit})"] = f"{_num(fin.min())} ({int(fin.idxmin())})"
    for (e_key, ref_key, kt_key, _) in DIRECTIONS.values():
        e = ctx.es(e_key)
        if len(e):
            fin = _finite(e)
            s[f"{e_key} last / max"] = (f"{_num(e.iloc[-1])} / "
                                        f"{_num(fin.max()) if len(fin) else 'n/a'}")
            r = _finite(ctx.es(ref_key))
            if len(r):
                s[ref_key] = _num(r.iloc[-1])
    for name in ("val/reconstruction_rmsd_nm", "val/acceptance_flow", "val/acceptance_naive",
                 "val/nonfinite_fraction", *QUALITY_PLOT_METRICS, "adapter/gamma_mean"):
        ser = ctx.es(name)
        if len(ser) and name not in s:
            s[f"{name} first -> last"] = f"{_num(ser.iloc[0])} -> {_num(ser.iloc[-1])}"
    g = _finite(logs.step_series(ctx.m, "train/grad_norm"))
    if len(g):
        s["train/grad_norm max"] = _num(g.max())
    n = _val_size(ctx)
    if n is not None:
        s["validation samples"] = (f"fraction {n[1]:g} ({n[0]})" if "fraction" in n[0]
                                   else f"{int(n[1])} ({n[0]})")
    if ctx.run.stopped:
        s["stopped"] = f"{ctx.run.stopped.get('monitor')} at step {ctx.run.stopped.get('step')}"
    s["checkpoints"] = len(ctx.run.checkpoints)
    for k, v in list(ctx.run.evaluation.items())[:20]:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            s[f"evaluation: {k}"] = _num(v)
    return s


def _num(v: Any) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{x:.4g}"


def make_plots(ctx: _Ctx, plot_dir: Path) -> dict[str, str]:
    from moltune.validation.plots import series_plot

    out: dict[str, str] = {}
    panels: dict[str, dict[str, pd.Series]] = {}
    totals = {f"{sp}/loss": ctx.loss(sp) for sp in ("train", "val") if len(ctx.loss(sp))}
    if totals:
        panels["loss"] = totals
    for kind in ("loss_forward", "loss_inverse"):
        lines = {f"{sp}/{kind}": ctx.loss(sp, kind) for sp in ("train", "val") if len(ctx.loss(sp, kind))}
        if lines:
            panels[kind.replace("_", " ")] = lines
    if panels:
        out["loss"] = series_plot(panels, plot_dir / "diagnosis_loss.png", "losses per direction",
                                  xlabel=ctx.unit).name
    energy_panels = {}
    for direction, (e_key, ref_key, _, _) in DIRECTIONS.items():
        lines = {k: ctx.es(k) for k in (e_key, ref_key) if len(ctx.es(k))}
        if lines:
            energy_panels[f"{direction}: energy of transformed samples vs reference (kJ/mol)"] = lines
    if energy_panels:
        out["energies"] = series_plot(energy_panels, plot_dir / "diagnosis_energies.png",
                                      "energies over training", xlabel=ctx.unit).name
    q = {k: ctx.es(k) for k in (*QUALITY_PLOT_METRICS, "adapter/gamma_mean") if len(ctx.es(k))}
    if q:
        out["quality"] = series_plot({"quality metrics": q}, plot_dir / "diagnosis_quality.png",
                                     f"quality metrics over {ctx.unit}s", xlabel=ctx.unit).name
    return out


# --------------------------------------------------------------------------- entry points


def diagnose_run(run: logs.RunData, cfg: DiagnoseConfig | None = None,
                 plot_dir: Path | None = None) -> Diagnosis:
    """Apply every rule to ``run``; findings sorted most severe first (healthy first if present)."""
    cfg = cfg or DiagnoseConfig()
    ctx = _Ctx(run, cfg)
    for rule in RULES:
        f = rule(ctx)
        if f is not None:
            ctx.found[f.id] = f
    findings = list(ctx.found.values())
    if not any(f.severity in ("critical", "high", "medium") for f in findings):
        findings.append(_healthy(ctx))
    findings.sort(key=lambda f: sort_key(f.id, f.severity))
    for f in findings:
        f.evidence = {k: _f(v) for k, v in f.evidence.items()}
        f.columns = _columns_named(f.evidence, run)
        for name, column in f.columns.items():  # titles speak the log's own names
            if column != name:
                f.title = re.sub(re.escape(name) + r"(?![\w/])", column, f.title)
    plots = make_plots(ctx, plot_dir) if plot_dir is not None else {}
    for f in findings:
        f.plot = plots.get(f.plot) if f.plot else None
        if f.plot:
            f.plot = f"plots/{f.plot}"
    return Diagnosis(str(run.path), summary(ctx), findings, plots, cfg, _metrics_read(run))


def _columns_named(evidence: dict[str, Any], run: logs.RunData) -> dict[str, str]:
    """Contract name -> the log's own column, for every metric an evidence key is about."""
    res = run.resolution
    if res is None:
        return {}
    names = sorted({mn._base(n) for n in res.rename.values()}, key=len, reverse=True)
    out: dict[str, str] = {}
    for key in evidence:
        hit = next((n for n in names if key == n or key.startswith((n + "_", n + ":"))), None)
        if hit is not None:
            out[hit] = next(c for c, n in res.rename.items() if mn._base(n) == hit)
    return out


def _metrics_read(run: logs.RunData) -> list[str]:
    res = run.resolution
    if res is None:
        return []
    lines = ["## Metrics read", "", "| role | column |", "|---|---|"]
    lines += [f"| {role} | `{col}` |" for role, col in res.roles.items()]
    lines += ["", "Columns not used: " + (", ".join(f"`{c}`" for c in res.unused) or "none")]
    if res.unassigned_validation:
        lines += ["", "Validation-looking columns not assigned a role: "
                  + ", ".join(f"`{c}`" for c in res.unassigned_validation)
                  + " (assign one with `--metric val_loss=COLUMN`)"]
    return lines + [""]


def to_markdown(d: Diagnosis) -> str:
    lines = [f"# Diagnosis: `{d.run}`", ""]
    serious = [f for f in d.findings if f.severity in ("critical", "high", "medium")]
    if d.findings and d.findings[0].id == "healthy":
        lines += ["**Healthy.** " + d.findings[0].title + ".", ""]
    else:
        lines += [f"**{len(serious)} problem(s) found. Most severe: {d.findings[0].title}.**", ""]
    lines += ["## Key figures", "", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in d.summary.items()]
    lines += [""] + d.metrics_read + ["## Findings (most severe first)", ""]
    for i, f in enumerate(d.findings, 1):
        lines += [f"### {i}. [{f.severity.upper()}] {f.title}", "", f"id: `{f.id}`", ""]
        if f.columns:
            lines += ["columns: " + ", ".join(f"`{c}`" + (f" (as {n})" if c != n else "")
                                               for n, c in f.columns.items()), ""]
        if f.evidence:
            lines += ["| evidence | value |", "|---|---|"]
            lines += [f"| `{k}` | {v} |" for k, v in f.evidence.items()]
            lines.append("")
        if f.plot:
            lines += [f"![{f.id}]({f.plot})", ""]
        if f.causes:
            lines += ["Likely causes:", ""] + [f"- {c}" for c in f.causes] + [""]
        if f.next_steps:
            lines += ["Next steps:", ""] + [f"- {c}" for c in f.next_steps] + [""]
    lines += ["## How these findings were made", "",
              ("Rules in `moltune/validation/diagnose.py` (ids in `moltune/validation/vocabulary.py`)"
              ", with these thresholds:"), ""]
    lines += [f"- `{k}` = {v}" for k, v in asdict(d.config).items()]
    return "\n".join(lines) + "\n"


def run_diagnosis(path: str | Path, out: str | Path | None = None, cfg: DiagnoseConfig | None = None,
                  wandb_run: str | None = None, metrics: dict[str, str] | None = None) -> Diagnosis:
    """Read a run folder (or log), diagnose it, write diagnosis.md, diagnosis.json and plots.

    ``metrics``: {contract name: column} overrides (see :func:`moltune.validation.metrics.
    parse_overrides`)."""
    run = logs.load_run(path, wandb_run, metrics)
    out_dir = Path(out) if out is not None else run.path
    d = diagnose_run(run, cfg, out_dir / "plots")
    write_strict_json(out_dir / "diagnosis.json", d.as_json())
    write_text(out_dir / "diagnosis.md", to_markdown(d))
    return d
