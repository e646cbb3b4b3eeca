"""Read training logs into one tidy table: Lightning CSV, TensorBoard event files, W&B CSV exports.

The tidy table is a ``pandas.DataFrame`` with columns ``step`` (int), ``epoch`` (float, NaN when
unknown), ``metric`` (str) and ``value`` (float). A metric that was not logged at a step has no
row; a metric logged as NaN or inf keeps its row with that value, so non-finite values stay
visible (pandas' default CSV reader would confuse Lightning's blank cells with logged NaN).

Lightning appends ``_step`` / ``_epoch`` to a key logged with both ``on_step`` and ``on_epoch``;
:func:`epoch_series` and :func:`step_series` resolve those suffixes, so callers use contract names
(``train/loss``) regardless.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moltune.common.errors import InputFileError, InvalidInputError

TIDY_COLUMNS = ["step", "epoch", "metric", "value"]
_WANDB_META = {"_step", "_runtime", "_timestamp", "Step", "step", "epoch", "Epoch", "_wandb",
               "trainer/global_step"}


def _to_float(text: str) -> float | None:
    """Parse a CSV cell: blank -> None (not logged); 'nan', 'inf', '-inf' kept as floats."""
    text = text.strip()
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        low = text.lower()
        if low in ("nan", "none", "null"):
            return math.nan
        if low in ("infinity", "+infinity"):
            return math.inf
        if low == "-infinity":
            return -math.inf
        return None


def _tidy(rows: list[tuple[int, float, str, float]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    df["step"] = df["step"].astype("int64")
    df["epoch"] = df["epoch"].astype("float64")
    df["value"] = df["value"].astype("float64")
    return df.sort_values(["step", "metric"], kind="stable").reset_index(drop=True)


def read_lightning_csv(path: str | Path) -> pd.DataFrame:
    """Read a Lightning ``CSVLogger`` ``metrics.csv`` (columns ``epoch``, ``step``, one per key)."""
    path = Path(path)
    rows: list[tuple[int, float, str, float]] = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise InvalidInputError(f"{path}: not a Lightning metrics.csv (no 'step' column)")
        keys = [k for k in reader.fieldnames if k not in ("step", "epoch")]
        for i, rec in enumerate(reader):
            step = _to_float(rec.get("step") or "")
            if step is None or not math.isfinite(step):
                step = float(i)
            epoch = _to_float(rec.get("epoch") or "")
            for key in keys:
                value = _to_float(rec.get(key) or "")
                if value is not None:
                    rows.append((int(step), math.nan if epoch is None else epoch, key, value))
    return _tidy(rows)


def read_tensorboard(path: str | Path) -> pd.DataFrame:
    """Read scalars from TensorBoard event files (a file or a folder searched recursively).

    Uses tensorboard's ``EventAccumulator``; the epoch comes from an ``epoch`` scalar logged at the
    same step (Lightning logs one), else it is NaN.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob("events.out.tfevents.*"))
    if not files:
        raise InputFileError(f"{path}: no TensorBoard event files (events.out.tfevents.*)")
    raw: list[tuple[int, str, float]] = []
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            for ev in acc.Scalars(tag):
                raw.append((int(ev.step), tag, float(ev.value)))
    epoch_at = {s: v for s, t, v in raw if t == "epoch"}
    rows = [(s, epoch_at.get(s, math.nan), t, v) for s, t, v in raw if t != "epoch"]
    return _tidy(rows)


def read_wandb_csv(path: str | Path, run: str | None = None) -> pd.DataFrame:
    """Read a Weights & Biases CSV export.

    Two layouts are understood: a run-history export (``_step`` plus one column per metric, e.g.
    ``train/loss``), and a chart-panel export (``Step`` plus ``RUN NAME - metric`` columns, with
    ``__MIN`` / ``__MAX`` companions that are ignored). A panel export holding several runs needs
    ``run`` to pick one.
    """
    path = Path(path)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        records = list(reader)
    # Lightning's WandbLogger logs the true step as trainer/global_step; _step is W&B's counter
    step_col = next((c for c in ("trainer/global_step", "_step", "Step", "step") if c in fields), None)
    epoch_col = next((c for c in ("epoch", "Epoch") if c in fields), None)
    metric_cols: dict[str, str] = {}
    runs_seen: set[str] = set()
    for col in fields:
        if col in _WANDB_META or col == step_col or col.endswith(("__MIN", "__MAX")):
            continue
        if col.startswith("_"):
            continue
        if " - " in col:
            run_name, metric = col.split(" - ", 1)
            runs_seen.add(run_name)
            if run is not None and run_name != run:
                continue
            metric_cols[col] = metric
        else:
            metric_cols[col] = col
    if run is None and len(runs_seen) > 1:
        raise InvalidInputError(
            f"{path}: W&B export holds several runs ({', '.join(sorted(runs_seen))}); choose one"
        )
    if run is not None and runs_seen and run not in runs_seen:
        raise InvalidInputError(f"{path}: run {run!r} not in export ({', '.join(sorted(runs_seen))})")
    if not metric_cols:
        raise InvalidInputError(f"{path}: no metric columns found in W&B CSV export")
    rows = []
    for i, rec in enumerate(records):
        step = _to_float(rec.get(step_col, "") or "") if step_col else None
        step = i if step is None or not math.isfinite(step) else step
        epoch = _to_float(rec.get(epoch_col, "") or "") if epoch_col else None
        for col, metric in metric_cols.items():
            value = _to_float(rec.get(col) or "")
            if value is not None:
                rows.append((int(step), math.nan if epoch is None else epoch, metric, value))
    return _tidy(rows)


def _is_lightning_csv(path: Path) -> bool:
    with open(path, newline="") as fh:
        header = next(csv.reader(fh), [])
    return "step" in header and "epoch" in header and not any(" - " in h for h in header)


def read_metrics(path: str | Path, run: str | None = None) -> pd.DataFrame:
    """Read any supported log (file or folder) into the tidy table; the format is detected.

    A binary, undecodable or unreadable file is a one-line :class:`InvalidInputError` /
    :class:`InputFileError`."""
    path = Path(path)
    try:
        return _read_metrics(path, run)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not a text log (binary or undecodable at byte "
                                f"{exc.start})") from exc
    except csv.Error as exc:
        raise InvalidInputError(f"{path}: not a readable CSV log ({exc})") from exc
    except IsADirectoryError as exc:
        raise InputFileError(f"{exc.filename}: a folder where a log file was expected") from exc
    except PermissionError as exc:
        raise InputFileError(f"{exc.filename or path}: permission denied") from exc


def _read_metrics(path: Path, run: str | None) -> pd.DataFrame:
    if not path.exists():
        raise InputFileError(f"{path}: no such file or folder")
    if path.is_file():
        if path.name.startswith("events.out.tfevents"):
            return read_tensorboard(path)
        if path.suffix == ".csv" or (path.suffix == ".log" and _csv_header(path)):
            with open(path, "rb") as fh:
                if b"\x00" in fh.read(1 << 20):
                    raise InvalidInputError(f"{path}: not a text log (holds NUL bytes: binary)")
            return read_lightning_csv(path) if _is_lightning_csv(path) else read_wandb_csv(path, run)
        raise InvalidInputError(f"{path}: unknown log format (want .csv or TensorBoard events)")
    found = locate_log(path)
    if found is None:
        raise InputFileError(
            f"{path}: no metrics.csv, TensorBoard event file or W&B CSV export found"
        )
    if found.is_dir():
        return read_tensorboard(found)
    return _read_metrics(found, run)


def _version_key(p: Path) -> int:
    m = re.search(r"version_(\d+)", str(p))
    return int(m.group(1)) if m else -1


def locate_log(folder: Path) -> Path | None:
    """The log file a folder holds: ``metrics.csv`` (also under ``version_N/``, latest version),
    else TensorBoard event files (returned as their folder), else one W&B ``*.csv`` export."""
    folder = Path(folder)
    if (folder / "metrics.csv").is_file():
        return folder / "metrics.csv"
    candidates = sorted(folder.glob("**/metrics.csv"), key=lambda p: (_version_key(p), str(p)))
    if candidates:
        return candidates[-1]
    events = sorted(folder.rglob("events.out.tfevents.*"), key=lambda p: (_version_key(p), str(p)))
    if events:
        return events[-1].parent
    csvs = sorted(folder.glob("*.csv"))
    if len(csvs) == 1:
        return csvs[0]
    keras = [p for p in sorted(folder.glob("*.log")) if _csv_header(p)]  # Keras CSVLogger
    return keras[0] if len(keras) == 1 else None


def _csv_header(path: Path) -> bool:
    """True when a text file starts with a CSV header naming an ``epoch`` column."""
    try:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return "epoch" in header and len(header) > 1


def has_metric(tidy: pd.DataFrame, name: str) -> bool:
    names = set(tidy["metric"].unique())
    return bool({name, f"{name}_epoch", f"{name}_step"} & names)


def _is_evaluation(name: str) -> bool:
    return name.startswith("val/")


def epoch_series(tidy: pd.DataFrame, name: str) -> pd.Series:
    """One value per epoch for ``name`` (index: epoch as int).

    Prefers ``name_epoch`` (Lightning's epoch aggregate), then ``name`` (last value logged in the
    epoch if it was logged once per epoch, else the mean over the epoch's steps, which stays NaN if
    any step was NaN), then ``name_step`` (mean). An evaluation metric (``val/...``) evaluated
    several times in an epoch keeps its last evaluation. When epochs are unknown, evaluations are
    numbered.
    """
    names = set(tidy["metric"].unique())
    for candidate in (f"{name}_epoch", name, f"{name}_step"):
        if candidate in names:
            sub = tidy[tidy["metric"] == candidate]
            if sub["epoch"].isna().all():
                values = sub["value"].to_numpy()
                return pd.Series(values, index=pd.Index(np.arange(len(values)), name="epoch"),
                                 name=name)
            sub = sub.dropna(subset=["epoch"])
            grouped = sub.groupby(sub["epoch"].astype(int))["value"]
            counts = grouped.size()
            if (counts == 1).all() or _is_evaluation(name):
                agg = grouped.last()
            else:
                agg = grouped.apply(lambda v: float(np.mean(v.to_numpy())))
            agg.index.name = "epoch"
            agg.name = name
            return agg.astype(float)
    return pd.Series([], dtype=float, name=name, index=pd.Index([], name="epoch", dtype=int))


def step_series(tidy: pd.DataFrame, name: str) -> pd.Series:
    """All logged values of ``name`` by step (prefers ``name_step``, then ``name``)."""
    names = set(tidy["metric"].unique())
    for candidate in (f"{name}_step", name, f"{name}_epoch"):
        if candidate in names:
            sub = tidy[tidy["metric"] == candidate]
            s = pd.Series(sub["value"].to_numpy(), index=pd.Index(sub["step"].to_numpy(), name="step"),
                          name=name)
            return s
    return pd.Series([], dtype=float, name=name, index=pd.Index([], name="step", dtype=int))


def evaluation_steps(tidy: pd.DataFrame, prefix: str = "val/") -> np.ndarray:
    """Sorted steps at which any ``prefix`` metric (validation) was logged."""
    sub = tidy[tidy["metric"].str.startswith(prefix)]
    return np.unique(sub["step"].to_numpy())


def timeline(tidy: pd.DataFrame) -> str:
    """``"epoch"`` when validation ran at most once per epoch (one value per epoch is the natural
    unit), else ``"step"`` (validation every N steps, e.g. ``val_check_interval``)."""
    val = tidy[tidy["metric"].str.startswith("val/")]
    if not len(val) or val["epoch"].isna().all():
        return "epoch"
    per_epoch = val.dropna(subset=["epoch"]).groupby("epoch")["step"].nunique()
    return "epoch" if (per_epoch <= 1).all() else "step"


def window_series(tidy: pd.DataFrame, name: str) -> pd.Series:
    """One value per evaluation step: an evaluation metric (``val/...``) is taken at its step (the
    last if several); a training metric is averaged over the steps since the previous evaluation
    (index: evaluation step)."""
    evals = evaluation_steps(tidy)
    names = set(tidy["metric"].unique())
    for candidate in (name, f"{name}_step", f"{name}_epoch"):
        if candidate in names:
            sub = tidy[tidy["metric"] == candidate]
            break
    else:
        return pd.Series([], dtype=float, name=name, index=pd.Index([], name="step", dtype=int))
    steps = sub["step"].to_numpy()
    values = sub["value"].to_numpy(dtype=float)
    if len(evals) == 0:
        return pd.Series(values, index=pd.Index(steps, name="step"), name=name)
    if _is_evaluation(name):
        labels = steps  # logged at the evaluation itself
    else:
        # Lightning logs training step k at step k and the evaluation after s steps at step s:
        # the window of the evaluation at s is [previous evaluation, s)
        ends = np.append(evals, max(int(steps.max()), int(evals[-1])) + 1)
        labels = ends[np.searchsorted(evals, steps, side="right")]
    df = pd.DataFrame({"label": labels, "value": values})
    if _is_evaluation(name):
        agg = df.groupby("label")["value"].last()
    else:
        agg = df.groupby("label")["value"].apply(lambda v: float(np.mean(v.to_numpy())))
    agg.index.name = "step"
    agg.name = name
    return agg.astype(float)


def series(tidy: pd.DataFrame, name: str, unit: str | None = None) -> pd.Series:
    """One value per evaluation of ``name`` on the run's :func:`timeline` (epoch or step)."""
    unit = unit or timeline(tidy)
    return epoch_series(tidy, name) if unit == "epoch" else window_series(tidy, name)


def evaluation_index(tidy: pd.DataFrame, unit: str, index) -> pd.DataFrame:
    """Epoch and step of each evaluation in ``index`` (epochs or steps, as ``unit`` says)."""
    val = tidy[tidy["metric"].str.startswith("val/")]
    rows = []
    for i in index:
        if unit == "epoch":
            sub = val[val["epoch"] == i]
            step = int(sub["step"].max()) if len(sub) else None
            rows.append((int(i), step))
        else:
            sub = val[val["step"] == i]
            ep = sub["epoch"].dropna()
            rows.append((int(ep.iloc[-1]) if len(ep) else None, int(i)))
    return pd.DataFrame(rows, columns=["epoch", "step"])


def first_step_of_epoch_value(tidy: pd.DataFrame, name: str, epoch: int) -> int | None:
    """The step at which ``name`` was logged for ``epoch`` (last such row), if any."""
    for candidate in (f"{name}_epoch", name, f"{name}_step"):
        sub = tidy[(tidy["metric"] == candidate) & (tidy["epoch"] == epoch)]
        if len(sub):
            return int(sub["step"].iloc[-1])
    return None


def fill_epochs(tidy: pd.DataFrame) -> pd.DataFrame:
    """A log without epochs (a plain TensorBoard ``SummaryWriter``, a W&B panel export): number
    the validations 0, 1, ... and give every row the number of the validation that closes its
    window (training steps before validation step s belong to it), so training and validation
    values align per evaluation."""
    if not len(tidy) or not tidy["epoch"].isna().all():
        return tidy
    evals = evaluation_steps(tidy)
    if len(evals) == 0:
        return tidy
    out = tidy.copy()
    # as in window_series: the evaluation after s training steps (logged at s) closes [prev, s)
    out["epoch"] = np.searchsorted(evals, out["step"].to_numpy(), side="right").astype(float)
    is_val = out["metric"].str.startswith("val/").to_numpy()
    if is_val.any():
        # several validation rows at one step keep that evaluation's number
        out.loc[is_val, "epoch"] = np.searchsorted(evals, out.loc[is_val, "step"].to_numpy())
    return out


# --------------------------------------------------------------------------- run folders


@dataclass
class RunData:
    """Everything ``diagnose`` reads from a run folder (moltune's or a plain Lightning one)."""

    path: Path
    log_path: Path | None
    metrics: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    stopped: dict[str, Any] | None = None
    redflags: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    resolution: Any = None  # metrics.Resolution: which log column fills which role

    @property
    def settings(self) -> dict[str, Any]:
        """config.yaml and hparams.yaml flattened into one ``a/b`` keyed mapping."""
        return flatten(self.hparams) | flatten(self.config)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to ``a/b/c`` keys (lists of numbers are kept as lists)."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}/{k}" if prefix else str(k)
            if isinstance(v, dict):
                out |= flatten(v, key)
            else:
                out[key] = v
    return out


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError:
        # Lightning may write python-object tags in hparams.yaml; read what plain YAML allows.
        with open(path) as fh:
            data = yaml.load(fh, Loader=_lenient_loader())
    return data if isinstance(data, dict) else {}


def _lenient_loader():
    """A SafeLoader that reads unknown python tags as plain mappings / sequences / scalars."""
    import yaml

    class Lenient(yaml.SafeLoader):
        pass

    def unknown(loader, suffix, node):
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node)
        return loader.construct_scalar(node)

    Lenient.add_multi_constructor("", unknown)
    return Lenient


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{path}: unreadable JSON ({exc})") from exc


def load_run(path: str | Path, run: str | None = None,
             overrides: dict[str, str] | None = None) -> RunData:
    """Read a run folder: metrics (any supported log), config.yaml, hparams.yaml, evaluation
    ``metrics.json`` files (flattened), stopped.json, redflags.json and checkpoints.

    The log's column names are resolved to contract names (:func:`moltune.validation.metrics.
    resolve`, ``overrides`` {contract name: column} first); ``resolution`` says what was read."""
    from moltune.validation import metrics as names

    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such run folder or log file")
    root = path if path.is_dir() else path.parent
    log_path = path if path.is_file() else locate_log(path)
    if log_path is None:
        raise InputFileError(
            f"{path}: not a run folder: no metrics.csv (also looked under version_N/), "
            "TensorBoard event file or W&B CSV export"
        )
    metrics = read_metrics(log_path, run)
    log_dir = log_path if log_path.is_dir() else log_path.parent
    config = _load_yaml(root / "config.yaml") if (root / "config.yaml").is_file() else {}
    hparams: dict[str, Any] = {}
    for cand in (log_dir / "hparams.yaml", root / "hparams.yaml"):
        if cand.is_file():
            hparams = _load_yaml(cand)
            break
    evaluation: dict[str, Any] = {}
    for cand in sorted(root.glob("*/metrics.json")) + sorted(root.glob("metrics.json")):
        data = _load_json(cand)
        if isinstance(data, dict):
            prefix = "" if cand.parent == root else cand.parent.name
            evaluation |= flatten(data, prefix)
    stopped = _load_json(root / "stopped.json") if (root / "stopped.json").is_file() else None
    redflags = _load_json(root / "redflags.json") if (root / "redflags.json").is_file() else []
    checkpoints = sorted(set(root.glob("checkpoints/*.ckpt")) | set(log_dir.glob("checkpoints/*.ckpt")))
    resolution = names.resolve(set(metrics["metric"].unique()), overrides)
    metrics = fill_epochs(names.apply(metrics, resolution))
    return RunData(root, log_path, metrics, config, hparams, evaluation, stopped,
                   redflags if isinstance(redflags, list) else [], checkpoints, resolution)


_CKPT_EPOCH = re.compile(r"epoch=(\d+)")
_CKPT_STEP = re.compile(r"step=?(\d+)")


def checkpoint_epoch(path: Path) -> int | None:
    """Epoch encoded in a Lightning checkpoint file name (``epoch=3-step=40.ckpt``), if any."""
    m = _CKPT_EPOCH.search(Path(path).name)
    return int(m.group(1)) if m else None


def checkpoint_step(path: Path) -> int | None:
    m = _CKPT_STEP.search(Path(path).name)
    return int(m.group(1)) if m else None
