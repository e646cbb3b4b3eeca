"""Metric names (the contract trainers log under) and metric roles resolved from any log's names.

Trainers import the name constants when they log, so the monitors, the diagnosis and the logs
agree by construction. A log written by anyone else is read through :func:`resolve`: each column
is split into tokens (case and the separators ``/ _ . -`` ignored), its split (train / val /
test) found wherever it sits (``train/loss``, ``train_loss``, ``loss/train``, ``Connectivity/val``,
``val_acc``, ``valid/...``, ``eval/...``; Keras' bare ``loss`` is training, ``val_loss``
validation), Lightning's ``_step`` / ``_epoch`` suffix kept aside, and the column renamed to its
contract name (``val/loss``, ``val/connectivity``, ``train/grad_norm``, ...). Test metrics keep a
``test/`` name and are never read as validation. ``--metric ROLE=COLUMN`` overrides win.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from moltune.common.errors import InvalidInputError

# --------------------------------------------------------------------------- contract names

TRAIN_LOSS = "train/loss"
TRAIN_LOSS_FORWARD = "train/loss_forward"
TRAIN_LOSS_INVERSE = "train/loss_inverse"
TRAIN_GRAD_NORM = "train/grad_norm"
TRAIN_LR = "train/lr"
TRAIN_SKIPPED_STEPS = "train/skipped_steps"
VAL_LOSS = "val/loss"
VAL_LOSS_FORWARD = "val/loss_forward"
VAL_LOSS_INVERSE = "val/loss_inverse"
VAL_ENERGY_FORWARD = "val/energy_forward_kjmol"
VAL_ENERGY_INVERSE = "val/energy_inverse_kjmol"
VAL_ENERGY_SOURCE_REF = "val/energy_source_ref_kjmol"
VAL_ENERGY_TARGET_REF = "val/energy_target_ref_kjmol"
VAL_KT_SOURCE = "val/kT_source_kjmol"
VAL_KT_TARGET = "val/kT_target_kjmol"
VAL_RECONSTRUCTION_RMSD = "val/reconstruction_rmsd_nm"
VAL_ACCEPTANCE_FLOW = "val/acceptance_flow"
VAL_ACCEPTANCE_NAIVE = "val/acceptance_naive"
VAL_NONFINITE_FRACTION = "val/nonfinite_fraction"
VAL_N_SAMPLES = "val/n_samples"
VAL_CONNECTIVITY = "val/connectivity"
VAL_VALIDITY = "val/validity"
VAL_QED = "val/qed"
VAL_SA = "val/sa"
ADAPTER_GAMMA_MEAN = "adapter/gamma_mean"
ADAPTER_GAMMA_STD = "adapter/gamma_std"
ADAPTER_BETA_MEAN = "adapter/beta_mean"
ADAPTER_BETA_STD = "adapter/beta_std"
ADAPTER_GAMMA_DRIFT = "adapter/gamma_drift"
ADAPTER_GRAD_NORM = "adapter/grad_norm"

# direction: (energy of transformed samples, reference mean, kT, per-direction loss), kJ/mol
DIRECTIONS: dict[str, tuple[str, str, str, str]] = {
    "forward": (VAL_ENERGY_FORWARD, VAL_ENERGY_TARGET_REF, VAL_KT_TARGET, "loss_forward"),
    "inverse": (VAL_ENERGY_INVERSE, VAL_ENERGY_SOURCE_REF, VAL_KT_SOURCE, "loss_inverse"),
}

# roles (what ``--metric ROLE=COLUMN`` names) -> contract name
ROLES: dict[str, str] = {
    "train_loss": TRAIN_LOSS, "val_loss": VAL_LOSS,
    "train_loss_forward": TRAIN_LOSS_FORWARD, "train_loss_inverse": TRAIN_LOSS_INVERSE,
    "val_loss_forward": VAL_LOSS_FORWARD, "val_loss_inverse": VAL_LOSS_INVERSE,
    "energy_forward": VAL_ENERGY_FORWARD, "energy_inverse": VAL_ENERGY_INVERSE,
    "energy_source_ref": VAL_ENERGY_SOURCE_REF, "energy_target_ref": VAL_ENERGY_TARGET_REF,
    "kT_source": VAL_KT_SOURCE, "kT_target": VAL_KT_TARGET,
    "reconstruction_rmsd": VAL_RECONSTRUCTION_RMSD, "nonfinite_fraction": VAL_NONFINITE_FRACTION,
    "grad_norm": TRAIN_GRAD_NORM, "lr": TRAIN_LR, "val_samples": VAL_N_SAMPLES,
    "gamma_mean": ADAPTER_GAMMA_MEAN,
}

# quality metrics by name token: True = higher is better
HIGHER_IS_BETTER = ("acc", "accuracy", "auc", "auroc", "rocauc", "f1", "precision", "recall",
                    "connectivity", "validity", "qed", "acceptance", "uniqueness", "novelty", "r2",
                    "iou", "dice", "map", "top1", "top5", "success", "balancedacc", "mcc",
                    "diversity")
LOWER_IS_BETTER = ("error", "err", "rmsd", "mae", "rmse", "perplexity", "ppl", "energy")
LOSS_TOKENS = ("loss", "nll", "mse", "ce", "crossentropy", "bce")

_SPLITS = {"train": "train", "training": "train", "trn": "train", "val": "val", "valid": "val",
           "validation": "val", "eval": "val", "evaluation": "val", "dev": "val", "test": "test",
           "testing": "test"}
_SUFFIXES = ("step", "epoch")
_IGNORED = {"epoch", "step", "hp_metric", "global_step", "trainer/global_step", "_step",
            "_runtime", "_timestamp", "time", "runtime"}
_SAMPLE_COUNT = re.compile(r"^(n|num|number)?_?(val|valid|validation)?_?(samples?|size|"
                           r"complexes|examples|count)$")


_VAL_WORDS = {"val", "valid", "validation", "eval", "dev"}
_SIZE_WORDS = {"n", "num", "number", "size", "samples", "sample", "count", "len", "examples",
               "complexes", "frac", "fraction", "split", "ratio", "pct", "percent"}
_NOT_SIZE = {"batch", "check", "every", "interval", "epoch", "epochs", "step", "steps", "freq",
             "frequency", "workers", "seed", "limit", "batches", "per", "max", "min"}


def is_val_size_key(key: str) -> bool:
    """A config / hparams key that gives the validation set's size or fraction (``n_val``,
    ``val_size``, ``num_validation_samples``, ``val_split``), not ``val_batch_size`` or
    ``check_val_every_n_epoch``."""
    toks = set(tokens(key.split("/")[-1]))
    return bool(toks & _VAL_WORDS and toks & _SIZE_WORDS and not toks & _NOT_SIZE)


def tokens(name: str) -> list[str]:
    """Lower-case tokens of a column name (``/ _ . -`` and spaces separate)."""
    return [t for t in re.split(r"[/_.\-\s]+", name.strip().lower()) if t]


def quality_direction(name: str) -> str | None:
    """``"higher"`` / ``"lower"`` for a quality metric name (``val/acc``), else None."""
    toks = tokens(name.split("/", 1)[-1]) if "/" in name else tokens(name)
    joined = "".join(toks)
    if any(t in LOSS_TOKENS for t in toks):
        return None
    if any(t in HIGHER_IS_BETTER for t in toks) or joined in HIGHER_IS_BETTER:
        return "higher"
    if any(t in LOWER_IS_BETTER for t in toks):
        return "lower"
    return None


@functools.lru_cache(maxsize=4096)
def contract_name(column: str) -> str | None:
    """The contract name a single column stands for (``val_loss_epoch`` -> ``val/loss``)."""
    return _canonical(column)[0]


def _canonical(column: str) -> tuple[str | None, str]:
    """(contract name or None when unrecognised, Lightning suffix "" / "_step" / "_epoch")."""
    if column in _IGNORED or column.lower() in _IGNORED:
        return None, ""
    toks = tokens(column)
    suffix = ""
    if len(toks) > 1 and toks[-1] in _SUFFIXES:
        suffix, toks = f"_{toks[-1]}", toks[:-1]
    if not toks:
        return None, ""
    split = None
    if toks[0] in _SPLITS:
        split, toks = _SPLITS[toks[0]], toks[1:]
    elif toks[-1] in _SPLITS and len(toks) > 1:
        split, toks = _SPLITS[toks[-1]], toks[:-1]
    if toks and toks[0] == "adapter":
        return "adapter/" + "_".join(toks[1:]), suffix
    joined = "_".join(toks)
    compact = "".join(toks)
    if compact in ("gradnorm", "gradientnorm", "gradnormtotal", "grad2.0normtotal", "grad2normtotal")\
            or (toks[:1] == ["grad"] and toks[-1:] == ["total"]):
        return TRAIN_GRAD_NORM, suffix
    if compact in ("lr", "learningrate") or (toks[:1] == ["lr"] and split is None):
        return TRAIN_LR, suffix
    if split in (None, "val") and _SAMPLE_COUNT.match(joined) and (split == "val" or "val" in joined):
        return VAL_N_SAMPLES, suffix
    if not toks:
        return None, ""
    if split is None:
        # Keras: bare names are training metrics; others are left alone
        if toks[0] in LOSS_TOKENS or quality_direction(joined) is not None:
            split = "train"
        else:
            return None, ""
    if split == "val" and joined.startswith("kt_"):
        joined = "kT_" + joined[3:]
    return f"{split}/{joined}", suffix


@dataclass
class Resolution:
    """How a log's columns map to contract names: ``rename`` (column -> contract name),
    ``roles`` (role -> column read), ``unused`` columns, ``unassigned_validation`` (columns that
    look like validation losses but fill no role) and ``quality`` (contract name -> direction)."""

    rename: dict[str, str] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    unassigned_validation: list[str] = field(default_factory=list)
    quality: dict[str, str] = field(default_factory=dict)

    def column(self, contract_name: str) -> str:
        """The log's own column behind a contract name (itself when not renamed)."""
        base = contract_name
        for original, new in self.rename.items():
            if new == base:
                return original
        return base

    def as_dict(self) -> dict[str, Any]:
        return {"roles": dict(self.roles), "unused_columns": list(self.unused),
                "unassigned_validation_columns": list(self.unassigned_validation),
                "quality_metrics": dict(self.quality)}


def parse_overrides(items: list[str] | dict[str, str] | None) -> dict[str, str]:
    """``ROLE=COLUMN`` strings (or a mapping) -> {contract name or quality name: column}."""
    if not items:
        return {}
    pairs = items.items() if isinstance(items, dict) else []
    if not isinstance(items, dict):
        parsed = []
        for item in items:
            if "=" not in item:
                raise InvalidInputError(f"--metric {item!r}: want ROLE=COLUMN, e.g. val_loss=val_nll")
            role, col = item.split("=", 1)
            parsed.append((role.strip(), col.strip()))
        pairs = parsed
    out: dict[str, str] = {}
    for role, col in pairs:
        if not isinstance(col, str) or not col:
            raise InvalidInputError(f"metric role {role!r}: column name missing")
        if role in ROLES:
            out[ROLES[role]] = col
        elif role.startswith(("quality:", "quality/")):
            out["val/" + role.split(":", 1)[-1].split("/", 1)[-1]] = col
        else:
            raise InvalidInputError(
                f"unknown metric role {role!r}; roles: {', '.join(ROLES)} or quality:NAME")
    return out


def resolve(columns: list[str] | set[str], overrides: dict[str, str] | None = None) -> Resolution:
    """Map a log's column names to contract names (see the module docstring)."""
    columns = sorted(set(columns))
    overrides = overrides or {}
    res = Resolution()
    forced: dict[str, str] = {}  # column -> full new name
    missing = []
    for name, col in overrides.items():
        if col in columns:
            forced[col] = name
        elif f"{col}_epoch" in columns or f"{col}_step" in columns:  # Lightning's suffixes
            forced |= {f"{col}{sfx}": f"{name}{sfx}" for sfx in ("_epoch", "_step")
                       if f"{col}{sfx}" in columns}
        elif col != name:  # naming the contract name itself asks for the usual resolution
            missing.append(col)
    if missing:
        raise InvalidInputError(f"--metric names column(s) not in the log: {', '.join(missing)}; "
                                f"logged: {', '.join(columns)}")
    taken: dict[str, str] = {}  # full new name (with suffix) -> column
    for col in columns:
        if col in forced:
            taken[forced[col]] = col
    for col in columns:
        if col in forced:
            continue
        name, suffix = _canonical(col)
        if name is None:
            continue
        full = name + suffix
        if full in taken:
            # the exact contract spelling wins over a look-alike
            if col == full and taken[full] != full and taken[full] not in forced:
                taken[full] = col
            continue
        if any(_base(n) == name for n in forced.values()):
            continue  # an override already fills this role
        taken[full] = col
    _fill_loss_from_single_candidate(taken, forced, columns)
    res.rename = {col: full for full, col in taken.items()}
    bases = {_base(n) for n in res.rename.values()}
    for role, name in ROLES.items():
        if name in bases:
            res.roles[role] = _column_for(res.rename, name)
    for n in sorted(bases):
        if n.startswith("val/"):
            d = quality_direction(n)
            if d is not None and not n.startswith(("val/energy", "val/kT")):
                res.quality[n] = d
                res.roles[f"quality:{n[4:]}"] = _column_for(res.rename, n)
    for name in forced.values():  # a quality metric named by hand: higher is better unless
        b = _base(name)             # its name says otherwise
        if b.startswith("val/") and b not in ROLES.values():
            res.quality[b] = quality_direction(b) or "higher"
            res.roles[f"quality:{b[4:]}"] = _column_for(res.rename, b)
    role_names = set(ROLES.values()) | set(res.quality) | {
        n for n in bases if n.startswith("adapter/")}
    res.unused = [c for c in columns if c not in _IGNORED
                  and _base(res.rename.get(c, "")) not in role_names]
    if VAL_LOSS not in bases:
        res.unassigned_validation = [c for c in columns if _looks_like_val_loss(c)
                                     and res.rename.get(c) not in (VAL_LOSS, VAL_LOSS + "_epoch",
                                                                   VAL_LOSS + "_step")]
    return res


def _base(name: str) -> str:
    for s in ("_epoch", "_step"):
        if name.endswith(s):
            return name[: -len(s)]
    return name


def _column_for(rename: dict[str, str], name: str) -> str:
    cols = [c for c, n in rename.items() if _base(n) == name]
    exact = [c for c in cols if rename[c] == name]
    return (exact or sorted(cols))[0]


def _looks_like_val_loss(col: str) -> bool:
    name, _ = _canonical(col)
    return bool(name and name.startswith("val/") and any(t in LOSS_TOKENS for t in tokens(name)))


def _fill_loss_from_single_candidate(taken: dict[str, str], forced: dict[str, str],
                                     columns: list[str]) -> None:
    """No plain ``loss``: when exactly one loss-like metric exists per split, it is the loss."""
    for split in ("train", "val"):
        target = f"{split}/loss"
        if any(_base(n) == target for n in taken):
            continue
        cands = {}
        for full, col in taken.items():
            b = _base(full)
            if b.startswith(split + "/") and col not in forced:
                toks = tokens(b.split("/", 1)[1])
                if toks and toks[0] in LOSS_TOKENS and "forward" not in toks and "inverse" not in toks:
                    cands.setdefault(b, []).append(full)
        if len(cands) == 1:
            (b, fulls), = cands.items()
            for full in fulls:
                taken[target + full[len(b):]] = taken.pop(full)


def apply(tidy, res: Resolution):
    """The tidy table with its metric names replaced by their contract names."""
    if not res.rename:
        return tidy
    out = tidy.copy()
    out["metric"] = out["metric"].map(lambda m: res.rename.get(m, m))
    known = set(res.rename.values())
    # an unrecognised column must not shadow a contract name
    clash = out["metric"].isin(known) & ~tidy["metric"].isin(list(res.rename))
    return out[~clash].reset_index(drop=True)
