"""Controls: named variants of a model evaluated on the same data with the same seeds.

Each variant states what it is expected to do relative to the reference; the protocol computes
the per-seed values (or takes them precomputed), compares each variant against the reference with
the statistics of :mod:`moltune.validation.stats` (Welch's t-test, or a paired t-test since the
seeds are shared; Hedges' g; Holm-adjusted p-values across variants) and gives a verdict:

=============  ====================================  =============================================
expected       pass when                              fail when
=============  ====================================  =============================================
``equal``      no significant difference and          significant difference, or (with a margin)
               |g| < 1 (with ``margin``: the 90% CI   the difference CI leaves [-margin, margin]
               of the difference inside +-margin,     while non-significant -> inconclusive
               i.e. TOST at 5%)
``worse``      significantly worse than reference     significantly better, or within seed-to-seed
                                                      variance
``better``     significantly better than reference    significantly worse, or within seed-to-seed
                                                      variance
``not_worse``  not significantly worse                significantly worse
=============  ====================================  =============================================

Anything else is ``inconclusive`` (fewer than two seeds, or a difference larger than the seed
spread that is not significant: more seeds needed). The transport flow uses it for "identity flow"
(naive swap, expected worse) vs the trained flow; the ligand model for pretrained / identity FiLM
(expected equal) / random FiLM (expected worse).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from moltune.common.errors import InvalidInputError
from moltune.common.io import write_text
from moltune.validation import stats
from moltune.validation.serialize import write_strict_json

EXPECTATIONS = {
    "reference": "the reference",
    "equal": "equal to the reference within noise",
    "worse": "clearly worse than the reference",
    "better": "better than the reference",
    "not_worse": "no worse than the reference",
}


@dataclass
class Variant:
    """A named variant: ``evaluate(seed)`` returns the metric (a float, or a dict holding it), or
    ``values`` holds precomputed per-seed values in the protocol's seed order."""

    name: str
    expected: str
    evaluate: Callable[[int], Any] | None = None
    values: Sequence[float] | None = None
    description: str = ""

    @classmethod
    def from_runs(cls, name: str, expected: str, runs: Sequence[str | Path], metric: str,
                  reduce: str = "last", description: str = "") -> Variant:
        """A variant whose per-seed values are read from run folders (one per seed, in the
        protocol's seed order; evaluation metrics.json first, else the log - see compare)."""
        from moltune.validation.compare import metric_value

        values = [metric_value(r, metric, reduce).value for r in runs]
        return cls(name, expected, values=values, description=description)

    def __post_init__(self) -> None:
        if self.expected not in EXPECTATIONS:
            raise InvalidInputError(f"variant {self.name}: expected must be one of "
                                    f"{', '.join(EXPECTATIONS)}, got {self.expected!r}")
        if (self.evaluate is None) == (self.values is None):
            raise InvalidInputError(f"variant {self.name}: give exactly one of evaluate or values")


@dataclass
class VariantResult:
    name: str
    expected: str
    description: str
    values: list[float]
    mean: float
    ci_low: float
    ci_high: float
    diff: float | None = None
    diff_ci_low: float | None = None
    diff_ci_high: float | None = None
    hedges_g: float | None = None
    g_ci_low: float | None = None
    g_ci_high: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    verdict: str = "reference"
    reason: str = ""


@dataclass
class ControlReport:
    metric: str
    higher_is_better: bool
    seeds: list[int]
    reference: str
    test: str
    alpha: float
    results: list[VariantResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.verdict in ("pass", "reference") for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed}


def _value(out: Any, metric: str) -> float:
    if isinstance(out, dict):
        if metric not in out:
            raise InvalidInputError(f"variant returned no {metric!r} (keys: {', '.join(out)})")
        out = out[metric]
    return float(out)


@dataclass
class ControlProtocol:
    """Reference + variants on shared seeds; :meth:`run` returns a :class:`ControlReport`."""

    metric: str
    variants: list[Variant]
    seeds: Sequence[int]
    higher_is_better: bool = True
    alpha: float = 0.05
    paired: bool = False
    margin: float | None = None
    correction: str = "holm"

    def __post_init__(self) -> None:
        refs = [v for v in self.variants if v.expected == "reference"]
        if len(refs) != 1:
            raise InvalidInputError("a control protocol needs exactly one variant with "
                                    "expected='reference'")
        self.reference = refs[0].name

    def collect(self) -> dict[str, list[float]]:
        """Per-seed values of every variant (evaluating callables seed by seed)."""
        out: dict[str, list[float]] = {}
        for v in self.variants:
            if v.values is not None:
                vals = [float(x) for x in v.values]
                if len(vals) != len(self.seeds):
                    raise InvalidInputError(f"variant {v.name}: {len(vals)} values for "
                                            f"{len(self.seeds)} seeds")
            else:
                vals = [_value(v.evaluate(int(s)), self.metric) for s in self.seeds]
            out[v.name] = vals
        return out

    def _test(self, a: list[float], b: list[float]) -> tuple[float, float, float]:
        """(p-value, CI low, CI high) of mean(a - b) or mean(a) - mean(b); 95% CI."""
        if self.paired:
            d = np.asarray(a, float) - np.asarray(b, float)
            d = d[np.isfinite(d)]
            if len(d) < 2:
                return math.nan, math.nan, math.nan
            if np.all(d == d[0]):
                # zero spread: the t statistic is infinite, so p would read 0 even for 3 seeds.
                # The exact sign-flip test is what n identical signs can show: 2 / 2^n.
                return (1.0 if d[0] == 0 else 2.0 ** (1 - len(d))), float(d[0]), float(d[0])
            res = sps.ttest_rel(np.asarray(a, float), np.asarray(b, float), nan_policy="omit")
            ci = res.confidence_interval(0.95)
            return float(res.pvalue), float(ci.low), float(ci.high)
        w = stats.welch_t_test(a, b)
        return w.p_value, w.ci_low, w.ci_high

    def _equivalent(self, a: list[float], b: list[float]) -> bool:
        """TOST: the 90% CI of the difference lies inside [-margin, margin]."""
        if self.paired:
            d = np.asarray(a, float) - np.asarray(b, float)
            res = sps.ttest_rel(a, b)
            ci = res.confidence_interval(1 - 2 * self.alpha)
            lo, hi = float(ci.low), float(ci.high)
            if np.all(d == d[0]):
                lo = hi = float(d[0])
        else:
            w = stats.welch_t_test(a, b, level=1 - 2 * self.alpha)
            lo, hi = w.ci_low, w.ci_high
        return bool(self.margin is not None and -self.margin <= lo and hi <= self.margin)

    def run(self, values: dict[str, list[float]] | None = None) -> ControlReport:
        values = values or self.collect()
        ref = values[self.reference]
        report = ControlReport(self.metric, self.higher_is_better, [int(s) for s in self.seeds],
                               self.reference, "paired t-test" if self.paired else "Welch t-test",
                               self.alpha)
        rows, pvals = [], []
        for v in self.variants:
            vals = values[v.name]
            lo, hi = stats.bootstrap_ci(vals)
            r = VariantResult(v.name, v.expected, v.description, vals, float(np.nanmean(vals)), lo, hi)
            if v.name != self.reference:
                p, dlo, dhi = self._test(vals, ref)
                g = stats.hedges_g(vals, ref)
                r.diff = float(np.nanmean(vals) - np.nanmean(ref))
                r.diff_ci_low, r.diff_ci_high, r.p_value = dlo, dhi, p
                r.hedges_g, r.g_ci_low, r.g_ci_high = g.g, g.ci_low, g.ci_high
                pvals.append(p)
            rows.append(r)
        adjusted = iter(stats.adjust(pvals, self.correction))
        for v, r in zip(self.variants, rows):
            if v.name != self.reference:
                r.p_adjusted = float(next(adjusted))
                r.verdict, r.reason = self._verdict(v, r, values[v.name], ref)
        report.results = rows
        return report

    def _verdict(self, v: Variant, r: VariantResult, vals: list[float], ref: list[float]
                 ) -> tuple[str, str]:
        n_ok = min(np.isfinite(np.asarray(vals, float)).sum(), np.isfinite(np.asarray(ref, float)).sum())
        if n_ok < 2:
            return "inconclusive", "fewer than two seeds: no seed-to-seed variance to test against"
        sig = r.p_adjusted is not None and math.isfinite(r.p_adjusted) and r.p_adjusted < self.alpha
        sign = 1 if self.higher_is_better else -1
        better = sig and sign * (r.diff or 0) > 0
        worse = sig and sign * (r.diff or 0) < 0
        spread = stats.verdict(vals, ref, r.p_adjusted if r.p_adjusted is not None else math.nan,
                               self.alpha)
        p_txt = f"p_adj = {r.p_adjusted:.3g}, g = {r.hedges_g:.3g}"
        if v.expected == "worse":
            if worse:
                return "pass", f"significantly worse ({p_txt})"
            if better:
                return "fail", f"significantly better than the reference ({p_txt})"
            if spread == "within seed-to-seed variance":
                return "fail", f"not distinguishable from the reference ({p_txt})"
            return "inconclusive", f"difference not significant with these seeds ({p_txt})"
        if v.expected == "better":
            if better:
                return "pass", f"significantly better ({p_txt})"
            if worse:
                return "fail", f"significantly worse than the reference ({p_txt})"
            if spread == "within seed-to-seed variance":
                return "fail", f"not distinguishable from the reference ({p_txt})"
            return "inconclusive", f"difference not significant with these seeds ({p_txt})"
        if v.expected == "not_worse":
            if worse:
                return "fail", f"significantly worse ({p_txt})"
            return "pass", f"not significantly worse ({p_txt})"
        # equal
        if sig:
            return "fail", f"significantly different from the reference ({p_txt})"
        if self.margin is not None:
            if self._equivalent(vals, ref):
                return "pass", f"equivalent within +-{self.margin:g} (TOST; {p_txt})"
            return "inconclusive", f"not shown equivalent within +-{self.margin:g} ({p_txt})"
        if r.hedges_g is not None and math.isfinite(r.hedges_g) and abs(r.hedges_g) < 1:
            return "pass", f"no significant difference and |g| < 1 ({p_txt})"
        return "inconclusive", f"not significant but |g| >= 1: more seeds needed ({p_txt})"


def _n(x: float | None) -> str:
    return "" if x is None else ("n/a" if not math.isfinite(x) else f"{x:.4g}")


def to_markdown(rep: ControlReport) -> str:
    head = (f"# Controls on `{rep.metric}` ({'higher' if rep.higher_is_better else 'lower'} is "
            f"better)\n\nSeeds {rep.seeds}; reference `{rep.reference}`; {rep.test}, Holm-adjusted "
            f"across variants, alpha {rep.alpha}. Overall: **{'PASS' if rep.passed else 'FAIL'}**\n\n")
    rows = [("| variant | expected | mean [95% CI] | diff vs ref [95% CI] | Hedges' g [95% CI] | "
            "p adj | verdict | why |"), "|---|---|---|---|---|---|---|---|"]
    for r in rep.results:
        diff = "" if r.diff is None else f"{_n(r.diff)} [{_n(r.diff_ci_low)}, {_n(r.diff_ci_high)}]"
        g = "" if r.hedges_g is None else f"{_n(r.hedges_g)} [{_n(r.g_ci_low)}, {_n(r.g_ci_high)}]"
        rows.append(f"| {r.name} | {EXPECTATIONS[r.expected]} | {_n(r.mean)} [{_n(r.ci_low)}, "
                    f"{_n(r.ci_high)}] | {diff} | {g} | {_n(r.p_adjusted)} | **{r.verdict}** | "
                    f"{r.reason} |")
    return head + "\n".join(rows) + "\n"


def write_report(rep: ControlReport, out_dir: str | Path) -> dict[str, Path]:
    """Write controls.md, controls.json and controls.png (per-seed values side by side)."""
    from moltune.validation.plots import comparison_plot

    out = Path(out_dir)
    return {
        "markdown": write_text(out / "controls.md", to_markdown(rep)),
        "json": write_strict_json(out / "controls.json", rep.as_dict()),
        "plot": comparison_plot({r.name: r.values for r in rep.results},
                                {r.name: (r.ci_low, r.ci_high) for r in rep.results}, rep.metric,
                                out / "controls.png"),
    }
