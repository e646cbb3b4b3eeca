"""Compare runs, groups of seed replicates, or checkpoints on one metric.

A *group* is one or more run folders (seeds); each run contributes one value, so seeds are the
unit of replication. A run's value is taken from its evaluation ``metrics.json`` when that holds
the metric, else from its logged metric reduced over epochs (``last``, ``min``, ``max``). A
checkpoint file (``RUN/checkpoints/epoch=E-...ckpt``) is valued at epoch E of its run's log.

For each comparison (every group against ``reference``, or all pairs): Welch's t-test, Hedges' g
with its interval, adjusted p-values (Holm by default) and a plain verdict (see
:func:`moltune.validation.stats.verdict`): ``different``, ``within seed-to-seed variance`` or
``too small to decide``.
"""

from __future__ import annotations

import glob
import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moltune.common.errors import InputFileError, InvalidInputError
from moltune.common.io import atomic_path, write_text
from moltune.validation import logs, stats
from moltune.validation.serialize import write_strict_json


@dataclass
class RunValue:
    group: str
    path: str
    value: float
    source: str


def _is_run(path: Path) -> bool:
    return path.is_dir() and logs.locate_log(path) is not None


def metric_value(path: str | Path, metric: str, reduce: str = "last") -> RunValue:
    """One run's (or checkpoint's) value of ``metric``."""
    path = Path(path)
    if path.suffix == ".ckpt":
        epoch = logs.checkpoint_epoch(path)
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        if epoch is None:
            raise InvalidInputError(f"{path}: checkpoint name carries no epoch (want epoch=E-...)")
        s = logs.epoch_series(logs.read_metrics(run_dir), metric)
        if epoch not in s.index:
            raise InvalidInputError(f"{path}: {metric!r} not logged at epoch {epoch} in {run_dir}")
        return RunValue("", str(path), float(s.loc[epoch]), f"log at epoch {epoch}")
    run = logs.load_run(path)
    for key, v in run.evaluation.items():
        if key == metric or key.endswith("/" + metric):
            if isinstance(v, list):
                arr = np.asarray(v, dtype=float)
                return RunValue("", str(path), float(np.nanmean(arr)), f"evaluation {key} (mean)")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return RunValue("", str(path), float(v), f"evaluation {key}")
    res = run.resolution  # the log's columns were renamed to contract names: follow the metric
    name = res.rename.get(metric, metric) if res is not None else metric
    s = logs.epoch_series(run.metrics, name)
    if not len(s):
        raise InvalidInputError(
            f"{path}: metric {metric!r} not logged; logged: "
            f"{', '.join(sorted(run.metrics['metric'].unique()))}"
        )
    fin = s[np.isfinite(s.to_numpy(dtype=float))]
    if reduce == "last":
        return RunValue("", str(path), float(s.iloc[-1]), "log, last epoch")
    if reduce in ("min", "max"):
        if not len(fin):
            return RunValue("", str(path), math.nan, f"log, {reduce} (no finite value)")
        v = fin.min() if reduce == "min" else fin.max()
        return RunValue("", str(path), float(v), f"log, {reduce} over epochs")
    raise InvalidInputError(f"unknown reduce {reduce!r}; use last, min or max")


def resolve_groups(specs: Sequence[str]) -> dict[str, list[Path]]:
    """Turn CLI arguments into named groups of run folders / checkpoints.

    ``LABEL=PATH[,PATH...]`` names a group explicitly (each PATH may be a glob); a plain run
    folder or checkpoint is a group of one; a folder whose sub-folders are runs is a group of
    those (one per seed).
    """
    groups: dict[str, list[Path]] = {}
    for spec in specs:
        label, _, rest = spec.partition("=") if "=" in spec else ("", "", spec)
        paths: list[Path] = []
        for part in rest.split(","):
            matches = sorted(glob.glob(part)) or [part]
            paths += [Path(m) for m in matches]
        expanded: list[Path] = []
        for p in paths:
            if not p.exists():
                raise InputFileError(f"{p}: no such run folder or checkpoint")
            if p.suffix == ".ckpt" or _is_run(p) and (p / "metrics.csv").exists():
                expanded.append(p)
            elif p.is_dir():
                subs = sorted(d for d in p.iterdir() if d.is_dir() and (d / "metrics.csv").exists())
                expanded += subs if subs else ([p] if _is_run(p) else [])
                if not subs and not _is_run(p):
                    raise InputFileError(f"{p}: neither a run folder nor a folder of runs")
        name = label or (paths[0].stem if len(paths) == 1 else paths[0].parent.name)
        base, k = name, 2
        while name in groups:
            name, k = f"{base}_{k}", k + 1
        groups[name] = expanded
    return groups


@dataclass
class GroupStats:
    group: str
    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    values: list[float]


@dataclass
class PairComparison:
    a: str
    b: str
    n_a: int
    n_b: int
    mean_diff: float
    diff_ci_low: float
    diff_ci_high: float
    t: float
    df: float
    p_value: float
    p_adjusted: float
    hedges_g: float
    g_ci_low: float
    g_ci_high: float
    pooled_sd: float
    verdict: str


@dataclass
class Comparison:
    metric: str
    correction: str
    alpha: float
    groups: list[GroupStats]
    pairs: list[PairComparison]
    runs: list[RunValue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def group_stats(name: str, values: Sequence[float], seed: int = 0) -> GroupStats:
    v = np.asarray(values, dtype=float)
    f = v[np.isfinite(v)]
    lo, hi = stats.bootstrap_ci(f, seed=seed)
    return GroupStats(name, len(f), float(np.mean(f)) if len(f) else math.nan,
                      float(np.std(f, ddof=1)) if len(f) > 1 else math.nan, lo, hi,
                      [float(x) for x in v])


def compare_values(values: dict[str, Sequence[float]], metric: str = "value",
                   reference: str | None = None, correction: str = "holm",
                   alpha: float = 0.05) -> Comparison:
    """Statistics for named groups of per-seed values (see the module docstring)."""
    if len(values) < 2:
        raise InvalidInputError("need at least two runs or groups to compare")
    if reference is not None and reference not in values:
        raise InvalidInputError(f"reference {reference!r} is not one of {', '.join(values)}")
    gs = [group_stats(k, v) for k, v in values.items()]
    if reference is not None:
        pairs = [(k, reference) for k in values if k != reference]
    else:
        pairs = list(itertools.combinations(values, 2))
    raw = []
    for a, b in pairs:
        w = stats.welch_t_test(values[a], values[b])
        g = stats.hedges_g(values[a], values[b])
        raw.append((a, b, w, g))
    p_adj = stats.adjust([w.p_value for _, _, w, _ in raw], correction)
    out = []
    for (a, b, w, g), pa in zip(raw, p_adj):
        va, vb = values[a], values[b]
        out.append(PairComparison(
            a, b, int(np.isfinite(np.asarray(va, float)).sum()),
            int(np.isfinite(np.asarray(vb, float)).sum()), w.mean_diff, w.ci_low, w.ci_high, w.t,
            w.df, w.p_value, float(pa), g.g, g.ci_low, g.ci_high, stats.pooled_sd(va, vb),
            stats.verdict(va, vb, float(pa), alpha)))
    notes = []
    if any(g.n < 2 for g in gs):
        notes.append("groups with a single run have no seed-to-seed variance: differences involving "
                     "them cannot be tested; add seeds (3+ per group)")
    if len(pairs) > 1:
        notes.append(f"{len(pairs)} comparisons; p-values adjusted with {correction}")
    return Comparison(metric, correction, alpha, gs, out, notes=notes)


def compare_runs(specs: Sequence[str], metric: str, reduce: str = "last", reference: str | None = None,
                 correction: str = "holm", alpha: float = 0.05) -> Comparison:
    """Resolve groups from CLI-style specs, read each run's value and compare."""
    groups = resolve_groups(specs)
    runs: list[RunValue] = []
    values: dict[str, list[float]] = {}
    for name, paths in groups.items():
        for p in paths:
            rv = metric_value(p, metric, reduce)
            rv.group = name
            runs.append(rv)
            values.setdefault(name, []).append(rv.value)
    result = compare_values(values, metric, reference, correction, alpha)
    result.runs = runs
    return result


def _n(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4g}"


def to_markdown(c: Comparison) -> str:
    lines = [f"# Comparison on `{c.metric}`", "",
             ("Seeds are the unit: each run contributes one value. Intervals: 95% (bootstrap for "
             "means, Welch for differences, Hedges & Olkin for g)."), "",
             "| group | n | mean | 95% CI | sd |", "|---|---|---|---|---|"]
    lines += [f"| {g.group} | {g.n} | {_n(g.mean)} | [{_n(g.ci_low)}, {_n(g.ci_high)}] | {_n(g.sd)} |"
              for g in c.groups]
    lines += ["", ("| A vs B | mean A - B | 95% CI | Hedges' g [95% CI] | p (Welch) | p adjusted "
              f"({c.correction}) | verdict |"), "|---|---|---|---|---|---|---|"]
    lines += [f"| {p.a} vs {p.b} | {_n(p.mean_diff)} | [{_n(p.diff_ci_low)}, {_n(p.diff_ci_high)}] | "
              f"{_n(p.hedges_g)} [{_n(p.g_ci_low)}, {_n(p.g_ci_high)}] | {_n(p.p_value)} | "
              f"{_n(p.p_adjusted)} | {p.verdict} |" for p in c.pairs]
    if c.runs:
        lines += ["", "| group | run | value | source |", "|---|---|---|---|"]
        lines += [f"| {r.group} | `{r.path}` | {_n(r.value)} | {r.source} |" for r in c.runs]
    if c.notes:
        lines += [""] + [f"- {n}" for n in c.notes]
    return "\n".join(lines) + "\n"


def write_comparison(c: Comparison, out_dir: str | Path) -> dict[str, Path]:
    """Write comparison.csv (one row per pair), groups.csv, comparison.md, .json and a plot."""
    from moltune.validation.plots import comparison_plot

    out = Path(out_dir)
    paths = {}
    for name, rows in (("comparison.csv", [asdict(p) for p in c.pairs]),
                       ("groups.csv", [asdict(g) | {"values": " ".join(f"{v:.6g}" for v in g.values)}
                                       for g in c.groups])):
        with atomic_path(out / name) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
        paths[name] = out / name
    paths["comparison.md"] = write_text(out / "comparison.md", to_markdown(c))
    paths["comparison.json"] = write_strict_json(out / "comparison.json", c.as_dict())
    paths["plot"] = comparison_plot({g.group: g.values for g in c.groups},
                                    {g.group: (g.ci_low, g.ci_high) for g in c.groups}, c.metric,
                                    out / "comparison.png")
    return paths
