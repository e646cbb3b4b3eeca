"""The sampler comparison (``moltune pt compare-samplers``): plain PT vs flow-PT for equal CPU.

:func:`compare_samplers` runs each variant with ``run.sample`` into its own folder, extends the
cheaper ones to the flow-PT run's process CPU time, and writes ``compare.json``, ``compare.md``
(:func:`render_comparison`) and ``compare.png`` (:func:`plot_comparison`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from moltune.common.io import write_json
from moltune.flow.pt_sampler.analysis import BATCH_PS, observable_series
from moltune.flow.pt_sampler.plan import plan_swaps
from moltune.flow.pt_sampler.run import sample
from moltune.flow.rebuild import load_sampler_flow

log = logging.getLogger(__name__)

__all__ = ["compare_samplers", "plot_comparison", "reference_populations", "render_comparison"]


def _variant_time_ns(run: Path, time_ns: float) -> float:
    """A variant already extended past ``time_ns`` (CPU matching) keeps its longer time."""
    meta = run / "metadata.json"
    if meta.is_file():
        return max(time_ns, float(json.loads(meta.read_text()).get("time_ns", time_ns)))
    return time_ns


def compare_samplers(
    peptide: str,
    flow_spec: str,
    time_ns: float,
    out_dir: str | Path,
    temperatures_K: list[float] = (300.0, 450.0, 670.0, 1000.0),
    skip_temperatures_K: tuple[float, float] | None = (300.0, 1000.0),
    match_cpu: bool = True,
    max_extension: float = 10.0,
    progress: bool = True,
    observable_residue: int = 0,
    reference_dir: str | Path | None = None,
    **pt_options: Any,
) -> dict:
    """Plain PT vs flow-PT on one ladder (and a 2-replica flow skip), equal CPU; writes a table.

    Each variant runs in ``out_dir/<variant>`` (resumable). The flow-PT ladder run for
    ``time_ns`` sets the CPU budget; with ``match_cpu`` the other variants are extended (resumed
    with a longer time) until their process CPU time matches it. Writes ``compare.json``,
    ``compare.md`` and ``compare.png``; returns the JSON content. ``reference_dir``: a long
    plain PT run of the same peptide whose lowest-temperature populations every variant is
    checked against (z-scores; exactness means agreement within the errors).
    """
    from moltune.physics.replica_exchange import PTConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    flow, info = load_sampler_flow(flow_spec)
    temps = [float(t) for t in temperatures_K]
    variants: list[tuple[str, list[float], bool]] = [("flow_pt", temps, True)]
    skip_note = None
    if skip_temperatures_K is not None:
        pair = [float(t) for t in skip_temperatures_K]
        how = plan_swaps(pair, info)[(0, 1)]
        if how != "plain":
            variants.append(("flow_skip", pair, True))
        else:
            skip_note = (f"skipped the 2-replica {pair[0]:g}/{pair[1]:g} K variant: the flow is not "
                         "trained for that pair")  # fmt: skip
    variants.insert(0, ("plain_pt", temps, False))
    order = ["flow_pt"] + [v[0] for v in variants if v[0] != "flow_pt"]
    spec = {v[0]: v for v in variants}
    results: dict[str, dict] = {}
    budget = None
    for name in order:
        _, ladder, uses_flow = spec[name]
        run = out / name
        t_ns = _variant_time_ns(run, time_ns)
        cfg = PTConfig(temperatures_K=ladder, time_ns=t_ns, **pt_options)
        kw = {
            "flow": flow if uses_flow else None,
            "flow_info": info if uses_flow else None,
            "progress": progress,
            "observable_residue": observable_residue,
        }
        log.info("compare-samplers: %s (%s K, %.4g ns)", name, ladder, t_ns)
        res = sample(peptide, run, cfg, **kw)
        if name == "flow_pt":
            budget = res["cpu_s"]
        elif match_cpu and budget and res["cpu_s"] < 0.95 * budget:
            target = min(t_ns * budget / max(res["cpu_s"], 1e-9), max_extension * time_ns)
            target = math.ceil(target * 1000.0) / 1000.0  # whole ps
            if target > t_ns:
                cfg = PTConfig(temperatures_K=ladder, time_ns=target, **pt_options)
                res = sample(peptide, run, cfg, **kw)
        results[name] = res
    table = _comparison_table(results, budget)
    reference = None
    if reference_dir is not None:
        reference = reference_populations(reference_dir, observable_residue)
        for row in table:
            for obs, ref in reference["observables"].items():
                o = row.get(obs)
                if o and math.isfinite(
                    o["mean_error"] if o["mean_error"] is not None else math.nan
                ):
                    o["z_vs_reference"] = (o["mean"] - ref["mean"]) / math.hypot(
                        o["mean_error"], ref["mean_error"]
                    )
    doc = {
        "peptide": peptide,
        "flow": flow_spec,
        "flow_name": (info or {}).get("name", type(flow).__name__ if flow is not None else None),
        "time_ns_requested": time_ns,
        "cpu_budget_s": budget,
        "match_cpu": match_cpu,
        "note": skip_note,
        "reference": reference,
        "variants": results,
        "table": table,
    }
    write_json(out / "compare.json", doc)
    from moltune.common.io import write_text

    write_text(out / "compare.md", render_comparison(doc))
    plot_comparison(doc, out / "compare.png")
    return doc


def _ratio(a: float, ea: float, b: float, eb: float) -> tuple[float, float]:
    """a / b with its error (relative errors in quadrature)."""
    if not (b and math.isfinite(a) and math.isfinite(b)) or b == 0:
        return math.nan, math.nan
    r = a / b
    return r, abs(r) * math.sqrt((ea / a if a else 0.0) ** 2 + (eb / b) ** 2)


def _comparison_table(results: dict[str, dict], budget: float | None) -> list[dict]:
    """One row per variant. Besides the measured process CPU (noisy on a loaded machine: the same
    work took +-40% here), a *modelled* CPU = replica steps x the plain run's CPU per replica step
    + the swap move's own measured CPU (flow, energies, state transfers): it counts the flow's
    cost while removing load noise from the common OpenMM part."""
    rows = []
    plain = results.get("plain_pt", {})
    ref = plain.get("observables_T0", {})
    c_step = plain["cpu_s"] / plain["replica_steps"] if plain.get("replica_steps") else math.nan
    for name, r in results.items():
        modelled = r.get("replica_steps", 0) * c_step + r.get("swap_move_cpu_s", 0.0)
        row = {
            "variant": name,
            "temperatures_K": r["temperatures_K"],
            "production_ps": r["production_ps"],
            "cpu_s": r["cpu_s"],
            "modelled_cpu_s": modelled,
            "swap_move_cpu_s": r.get("swap_move_cpu_s", 0.0),
            "flow_cpu_fraction": r["flow_cpu_fraction"],
            "acceptance": {
                f"{p['temperatures_K'][0]:g}-{p['temperatures_K'][1]:g}": [
                    p["acceptance"],
                    p["acceptance_se"],
                ]
                for p in r["pairs"].values()
            },
            "round_trips": r["round_trips"],
            "round_trips_per_ns": r["round_trips_per_ns"],
            "nonfinite_proposals": r["nonfinite_proposals"],
        }
        for obs, est in r["observables_T0"].items():
            base = ref.get(obs, {})
            ratio = _ratio(est["ess_per_cpu_hour"], est["ess_per_cpu_hour_error"],
                           base.get("ess_per_cpu_hour", math.nan),
                           base.get("ess_per_cpu_hour_error", math.nan))  # fmt: skip
            row[obs] = {
                "mean": est["mean"], "mean_error": est["mean_error"],
                "tau_ps": est["tau_ps"], "tau_ps_error": est["tau_ps_error"],
                "ess": est["ess"], "ess_error": est["ess_error"],
                "ess_per_cpu_hour": est["ess_per_cpu_hour"],
                "ess_per_cpu_hour_error": est["ess_per_cpu_hour_error"],
                "transitions": est["transitions"],
                "ratio_to_plain": ratio[0], "ratio_to_plain_error": ratio[1],
            }  # fmt: skip
            bm, bm_ref = est.get("batch_means"), base.get("batch_means")
            if bm and bm_ref:
                row[obs]["bm_ess_per_cpu_hour"] = bm["ess_per_cpu_hour"]
                row[obs]["bm_ess_per_cpu_hour_error"] = bm["ess_per_cpu_hour_error"]
                row[obs]["bm_ratio_to_plain"], row[obs]["bm_ratio_to_plain_error"] = _ratio(
                    bm["ess_per_cpu_hour"], bm["ess_per_cpu_hour_error"],
                    bm_ref["ess_per_cpu_hour"], bm_ref["ess_per_cpu_hour_error"])  # fmt: skip
            if math.isfinite(modelled) and modelled > 0 and est["estimable"]:
                h = modelled / 3600.0
                row[obs]["ess_per_modelled_cpu_hour"] = est["ess"] / h
                row[obs]["ess_per_modelled_cpu_hour_error"] = est["ess_error"] / h
        for obs in r["observables_T0"]:
            o, b = row[obs], results.get("plain_pt") and row_plain_modelled(results, obs, c_step)
            if b is not None and "ess_per_modelled_cpu_hour" in o:
                o["modelled_ratio_to_plain"], o["modelled_ratio_to_plain_error"] = _ratio(
                    o["ess_per_modelled_cpu_hour"], o["ess_per_modelled_cpu_hour_error"], *b
                )
        rows.append(row)
    return rows


def row_plain_modelled(results: dict, obs: str, c_step: float) -> tuple[float, float] | None:
    """(ESS per modelled CPU hour, error) of the plain run for ``obs`` (None if not estimable)."""
    plain = results["plain_pt"]
    est = plain["observables_T0"].get(obs, {})
    h = (plain["replica_steps"] * c_step + plain.get("swap_move_cpu_s", 0.0)) / 3600.0
    if not est.get("estimable") or not h > 0:
        return None
    return est["ess"] / h, est["ess_error"] / h


def _pm(v: float, e: float, fmt: str = ".3g") -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:{fmt}} ± {e:{fmt}}" if e is not None and math.isfinite(e) else f"{v:{fmt}}"


def render_comparison(doc: dict) -> str:
    """The comparison as a markdown report (table + how to read it)."""
    lines = [
        f"# Plain PT vs flow-PT: {doc['peptide']}, flow {doc['flow_name']} ({doc['flow']})",
        "",
        f"Requested {doc['time_ns_requested']:g} ns per replica for the flow-PT ladder; its process "
        f"CPU time ({doc['cpu_budget_s']:.0f} s) is the budget"
        + (" the other variants were extended to match." if doc["match_cpu"] else "."),
        (
            "Slow observable at the lowest temperature: left-handed region population (phi > 0); "
            "psi_alpha (-2 < psi < 1 rad), a cis peptide bond and the potential energy as other "
            "checks. tau, ESS and 'vs plain' from Sokal's automatic window (c = 5), errors from "
            "Sokal's large-N formula. With few transitions (a rare state visited a handful of "
            "times) that tau comes out too short and ESS too large, several-fold and differently "
            f"for each sampler. 'Batch means' ({BATCH_PS:g} ps batches) does not have that bias "
            "but is noisy on one short run: for the efficiency figure pool independent runs with "
            "benchmarks/flow_pt_efficiency.py."
        ),
        "",
        (
            "| variant | T / K | ps | CPU s | flow CPU | acceptance per pair | round trips / ns | "
            "P(phi>0) | transitions | tau / ps | ESS | ESS / CPU h | vs plain | "
            "vs plain (modelled CPU) | ESS / CPU h, batch means | vs plain, batch means |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["table"]:
        acc = "; ".join(f"{k}: {_pm(v[0], v[1], '.2f')}" for k, v in r["acceptance"].items())
        o = r.get("phi_positive", {})
        lines.append(
            f"| {r['variant']} | {'/'.join(f'{t:g}' for t in r['temperatures_K'])} | "
            f"{r['production_ps']:.0f} | {r['cpu_s']:.0f} | "
            f"{_pm(r['flow_cpu_fraction'], None, '.0%')} | {acc} | "
            f"{_pm(r['round_trips_per_ns'], None, '.3g')} | "
            f"{_pm(o.get('mean', math.nan), o.get('mean_error'), '.4f')} | {o.get('transitions')} | "
            f"{_pm(o.get('tau_ps', math.nan), o.get('tau_ps_error'))} | "
            f"{_pm(o.get('ess', math.nan), o.get('ess_error'))} | "
            f"{_pm(o.get('ess_per_cpu_hour', math.nan), o.get('ess_per_cpu_hour_error'))} | "
            f"{_pm(o.get('ratio_to_plain', math.nan), o.get('ratio_to_plain_error'), '.2f')} | "
            f"{_pm(o.get('modelled_ratio_to_plain', math.nan), o.get('modelled_ratio_to_plain_error'), '.2f')} | "
            f"{_pm(o.get('bm_ess_per_cpu_hour', math.nan), o.get('bm_ess_per_cpu_hour_error'))} | "
            f"{_pm(o.get('bm_ratio_to_plain', math.nan), o.get('bm_ratio_to_plain_error'), '.2f')} |"
        )
    lines += [
        "",
        "Other observables at the lowest temperature (ESS per CPU hour, ratio to plain):",
        "",
    ]
    for r in doc["table"]:
        parts = []
        for obs in ("psi_alpha", "cis_peptide", "energy_kjmol"):
            o = r.get(obs)
            if o:
                parts.append(
                    f"{obs}: {_pm(o['ess_per_cpu_hour'], o['ess_per_cpu_hour_error'])} (ratio to "
                    f"plain {_pm(o['ratio_to_plain'], o['ratio_to_plain_error'], '.2f')}; "
                    "modelled CPU "
                    f"{_pm(o.get('modelled_ratio_to_plain', math.nan), o.get('modelled_ratio_to_plain_error'), '.2f')}"
                    "; batch means "
                    f"{_pm(o.get('bm_ratio_to_plain', math.nan), o.get('bm_ratio_to_plain_error'), '.2f')})"
                )
        lines.append(f"- {r['variant']}: " + "; ".join(parts))
    ref = doc.get("reference")
    if ref:
        head = (
            f"Populations at {ref['temperature_K']:g} K against the long plain PT run "
            f"{ref['directory']} ({ref['n_frames']} frames): z = (variant - reference) / "
            "combined error; |z| < 2 expected for exact samplers."
        )
        lines += ["", head, ""]
        for r in doc["table"]:
            parts = []
            for obs, rv in ref["observables"].items():
                o = r.get(obs, {})
                parts.append(f"{obs} {_pm(o.get('mean', math.nan), o.get('mean_error'), '.4f')} "
                             f"vs {_pm(rv['mean'], rv['mean_error'], '.4f')} "
                             f"(z = {_pm(o.get('z_vs_reference', math.nan), None, '.2f')})")  # fmt: skip
            lines.append(f"- {r['variant']}: " + "; ".join(parts))
    if doc.get("note"):
        lines += ["", f"Note: {doc['note']}"]
    return "\n".join(lines) + "\n"


def reference_populations(directory: str | Path, observable_residue: int = 0) -> dict:
    """Lowest-temperature observable means (with autocorrelation-aware errors) of a PT run."""
    from moltune.physics.ptdata import load_pt_data
    from moltune.physics.timeseries import integrated_autocorrelation

    data = load_pt_data(directory)
    series = observable_series(data.xyz_nm[0], data.md_topology, observable_residue)
    return {
        "directory": str(directory),
        "temperature_K": float(data.temperatures_K[0]),
        "n_frames": int(data.n_frames),
        "observables": {k: integrated_autocorrelation(v).as_dict() for k, v in series.items()},
    }


def plot_comparison(doc: dict, path: str | Path) -> None:
    """ESS per CPU hour of each observable per variant, and swap acceptance per pair (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moltune.common.io import atomic_path

    rows = doc["table"]
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4))
    obs = ["phi_positive", "psi_alpha", "energy_kjmol"]
    width = 0.8 / max(len(rows), 1)
    labels: list[str] = []
    for r in rows:
        labels += [p for p in r["acceptance"] if p not in labels]
    for n, r in enumerate(rows):
        v = [r.get(o, {}).get("ess_per_cpu_hour", np.nan) for o in obs]
        e = [r.get(o, {}).get("ess_per_cpu_hour_error", np.nan) for o in obs]
        a0.bar(np.arange(len(obs)) + n * width, v, width, yerr=e, label=r["variant"])
        for x, val in enumerate(v):
            if not np.isfinite(val):
                a0.annotate("n/a", (x + n * width, 0), xycoords=("data", "axes fraction"),
                            ha="center", va="bottom", fontsize=7)  # fmt: skip
        pairs = list(r["acceptance"])
        a1.errorbar([labels.index(p) + 0.1 * n for p in pairs],
                    [r["acceptance"][p][0] for p in pairs],
                    yerr=[r["acceptance"][p][1] for p in pairs], marker="o", ls="",
                    label=r["variant"])  # fmt: skip
    a1.set_xticks(range(len(labels)), labels)
    a0.set_xticks(np.arange(len(obs)) + 0.4 - width / 2, obs)
    a0.set_ylabel("ESS per CPU hour (lowest T)")
    a0.set_yscale("log")
    a0.legend(fontsize=8)
    a1.set_ylabel("swap acceptance")
    a1.set_xlabel("temperature pair / K")
    a1.set_ylim(0, 1)
    a1.legend(fontsize=8)
    fig.suptitle(f"{doc['peptide']}: plain PT vs flow-PT ({doc['flow_name']})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
