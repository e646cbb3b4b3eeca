"""Evaluate a temperature-transport flow on held-out replica-exchange data.

``evaluate_flow(flow, data_dir, pair=(i, j), out_dir)`` pushes the frames sampled at T_i through
the flow to T_j and the frames at T_j back, scores both directions with the exact energy (float64)
and writes into ``out_dir``:

- ``metrics.json``: swap acceptance (naive and through the flow, mean and 95% block-bootstrap
  interval over >= 10,000 pairs of held-out frames), Jeffreys divergence (kT), mean energies,
  importance-sampling ESS per direction, Ramachandran Jensen-Shannon divergence per direction,
  smallest interatomic distance per direction, the non-finite fraction and the round-trip
  (invertibility) RMSD;
- ``details.json`` (Ramachandran JS noise floors, autocorrelation, per-direction counts),
  ``per_frame.npz``;
- ``ramachandran.png`` (source, target, T(source), T^-1(target)) and
  ``energy_histograms_{forward,inverse}.png`` (transformed frames against their reference);
- ``report.md``: in plain words, whether the transport works and which direction fails.

The pure-array part, :func:`evaluate_transport`, is what the tests exercise on known systems.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from moltune.common.errors import InvalidInputError, check_number, check_output_dir
from moltune.common.io import save_npz, write_json, write_text
from moltune.flow import metrics as M
from moltune.flow.swaps import (
    acceptance_probability,
    forward_work,
    inverse_work,
    log_acceptance_flow,
    log_acceptance_naive,
    nonfinite_mask,
)

log = logging.getLogger(__name__)

EnergyFn = Callable[[torch.Tensor], torch.Tensor]

# Pass marks of issue 3 used by the plain-words verdict.
JS_MAX = 0.05
ENERGY_TOL_KT = 1.0
METRIC_KEYS = (
    "acceptance_naive",
    "acceptance_flow",
    "jeffreys_kt",
    "mean_energy_kjmol",
    "ess_forward",
    "ess_inverse",
    "ramachandran_js",
    "min_distance_nm",
    "nonfinite_fraction",
    "reconstruction_rmsd_nm",
)


# --------------------------------------------------------------------------- batched evaluation
def _batches(n: int, batch_size: int, desc: str, progress: bool):
    starts = range(0, n, batch_size)
    return tqdm(starts, desc=desc, disable=not progress, leave=False, unit="batch")


@torch.no_grad()
def apply_flow(
    flow: torch.nn.Module,
    x: torch.Tensor,
    t_source_K: float,
    t_target_K: float,
    inverse: bool = False,
    batch_size: int = 512,
    progress: bool = False,
) -> tuple[torch.Tensor, np.ndarray]:
    """T(x) (or T^-1(x)) for [F, N, 3] nm in batches; returns (coords, log|det| float64 [F])."""
    fn = flow.inverse if inverse else flow
    outs, lds = [], []
    desc = "T^-1(target)" if inverse else "T(source)"
    for s in _batches(x.shape[0], batch_size, desc, progress):
        y, ld = fn(x[s : s + batch_size], t_source_K, t_target_K)
        outs.append(y.to(x.dtype))
        lds.append(torch.as_tensor(ld).detach().to("cpu", torch.float64).reshape(-1))
    return torch.cat(outs), torch.cat(lds).numpy()


@torch.no_grad()
def batched_energy(
    energy: EnergyFn, x: torch.Tensor, batch_size: int = 1024, progress: bool = False, desc="U"
) -> np.ndarray:
    """U(x) in kJ/mol (float64 [F]); frames with non-finite coordinates get NaN, not an error."""
    out = np.full(x.shape[0], np.nan)
    for s in _batches(x.shape[0], batch_size, desc, progress):
        xb = x[s : s + batch_size]
        ok = torch.isfinite(xb).flatten(1).all(dim=1)
        if bool(ok.any()):
            idx = torch.nonzero(ok).flatten()
            u = energy(xb[idx].to(torch.float64))
            out[s + idx.numpy()] = u.detach().to("cpu", torch.float64).numpy()
    return out


def _mean_finite(u: np.ndarray) -> float:
    u = np.asarray(u, np.float64)
    u = u[np.isfinite(u)]
    return float(u.mean()) if u.size else float("nan")


# --------------------------------------------------------------------------- core
def evaluate_transport(
    flow: torch.nn.Module,
    energy: EnergyFn,
    x_source: torch.Tensor | np.ndarray,
    x_target: torch.Tensor | np.ndarray,
    t_source_K: float,
    t_target_K: float,
    dihedrals: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    n_pairs: int = 10_000,
    n_boot: int = 1000,
    n_roundtrip: int = 256,
    batch_size: int = 512,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict, dict, dict]:
    """Score ``flow`` between frames sampled at ``t_source_K`` and at ``t_target_K``.

    Frames are [F, N, 3] in nm, in simulation (time) order, and should be held out from training.
    ``energy`` maps [B, N, 3] float64 nm to U [B] kJ/mol; ``dihedrals`` maps [F, N, 3] (NaN
    frames included) to matching (phi, psi) arrays in radians, [F*k] or [F, k], of the finite
    frames (None: no Ramachandran comparison). The flow gets float64
    coordinates. Returns (metrics with :data:`METRIC_KEYS`, details, per-frame arrays).
    """
    from moltune.physics.units import beta

    x = torch.as_tensor(np.asarray(x_source), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(x_target), dtype=torch.float64)
    if x.dim() != 3 or y.dim() != 3 or x.shape[1:] != y.shape[1:] or x.shape[-1] != 3:
        raise InvalidInputError(
            f"source and target frames must be [F, N, 3] with the same N, got "
            f"{list(x.shape)} and {list(y.shape)}"
        )
    for name, a in (("source", x), ("target", y)):
        if not bool(torch.isfinite(a).all()):
            raise InvalidInputError(f"{name} frames contain NaN or infinite coordinates")
    b_i, b_j = float(beta(t_source_K)), float(beta(t_target_K))
    t0 = time.perf_counter()
    flow = flow.eval()

    tx, ld_f = apply_flow(flow, x, t_source_K, t_target_K, False, batch_size, progress)
    tinv_y, ld_i = apply_flow(flow, y, t_source_K, t_target_K, True, batch_size, progress)
    u_x = batched_energy(energy, x, progress=progress, desc="U(source)")
    u_y = batched_energy(energy, y, progress=progress, desc="U(target)")
    u_tx = batched_energy(energy, tx, progress=progress, desc="U(T(source))")
    u_ti = batched_energy(energy, tinv_y, progress=progress, desc="U(T^-1(target))")
    t_flow = time.perf_counter() - t0

    # validity per frame and direction
    bad_f = M.nonfinite_rows(tx.numpy(), ld_f, u_tx)
    bad_i = M.nonfinite_rows(tinv_y.numpy(), ld_i, u_ti)
    if nonfinite_mask(u_x).any() or nonfinite_mask(u_y).any():
        raise InvalidInputError("some reference frames have a non-finite energy")
    w_f = forward_work(u_x, u_tx, ld_f, b_i, b_j)
    w_r = inverse_work(u_y, u_ti, ld_i, b_i, b_j)

    # pairs of held-out frames, blocks for the interval
    # pairs depend only on the data (every flow is scored on the same held-out pairs); the
    # bootstrap blocks also follow the correlation of this flow's works
    pair_blocks = M.n_time_blocks(u_x, u_y)
    a, b = M.make_pairs(x.shape[0], y.shape[0], n_pairs, seed=seed, n_blocks=pair_blocks)
    n_blocks = min(
        pair_blocks,
        M.n_time_blocks(np.where(bad_f, np.nan, w_f), np.where(bad_i, np.nan, w_r)),
    )
    if a.size < n_pairs:
        log.warning("only %d pairs available (asked for %d): use more frames", a.size, n_pairs)
    acc_naive = acceptance_probability(log_acceptance_naive(u_x[a], u_y[b], b_i, b_j))
    acc_flow = acceptance_probability(
        log_acceptance_flow(u_x[a], u_y[b], u_tx[a], u_ti[b], ld_f[a], ld_i[b], b_i, b_j)
    )
    summary = lambda v: M.acceptance_summary(
        v, a, b, x.shape[0], y.shape[0], n_blocks, n_boot=n_boot, seed=seed
    )

    # round trips on a few frames: invertibility only
    k = min(n_roundtrip, x.shape[0], y.shape[0])
    rt_idx_x = np.linspace(0, x.shape[0] - 1, k).astype(int)
    rt_idx_y = np.linspace(0, y.shape[0] - 1, k).astype(int)
    ok_x, ok_y = rt_idx_x[~bad_f[rt_idx_x]], rt_idx_y[~bad_i[rt_idx_y]]
    x_back, _ = apply_flow(flow, tx[ok_x], t_source_K, t_target_K, True, batch_size)
    y_back, _ = apply_flow(flow, tinv_y[ok_y], t_source_K, t_target_K, False, batch_size)
    recon = M.reconstruction_rmsd(
        np.concatenate([x[ok_x].numpy(), y[ok_y].numpy()]),
        np.concatenate([x_back.numpy(), y_back.numpy()]),
    )

    rama, floors = {"forward": None, "inverse": None}, {}
    angles = {}
    if dihedrals is not None:
        angles = {
            "source": dihedrals(x.numpy()),
            "target": dihedrals(y.numpy()),
            "forward": dihedrals(np.where(bad_f[:, None, None], np.nan, tx.numpy())),
            "inverse": dihedrals(np.where(bad_i[:, None, None], np.nan, tinv_y.numpy())),
        }
        rama["forward"] = M.ramachandran_js(*angles["forward"], *angles["target"])
        rama["inverse"] = M.ramachandran_js(*angles["inverse"], *angles["source"])
        floors = {
            "forward": _sampling_floor(angles["target"], np.size(angles["forward"][0]), seed),
            "inverse": _sampling_floor(angles["source"], np.size(angles["inverse"][0]), seed),
            "source_vs_target": M.ramachandran_js(*angles["source"], *angles["target"]),
        }

    n_bad = int(bad_f.sum() + bad_i.sum())
    metrics = {
        "acceptance_naive": summary(acc_naive),
        "acceptance_flow": summary(acc_flow),
        "jeffreys_kt": M.jeffreys_divergence(w_f, w_r),
        "mean_energy_kjmol": {
            "source": _mean_finite(u_x),
            "target": _mean_finite(u_y),
            "forward": _mean_finite(u_tx),
            "inverse": _mean_finite(u_ti),
        },
        "ess_forward": M.normalized_ess(-w_f),
        "ess_inverse": M.normalized_ess(-w_r),
        "ramachandran_js": rama,
        "min_distance_nm": {
            "forward": M.min_interatomic_distance(tx.numpy()),
            "inverse": M.min_interatomic_distance(tinv_y.numpy()),
        },
        "nonfinite_fraction": n_bad / float(x.shape[0] + y.shape[0]),
        "reconstruction_rmsd_nm": recon,
    }
    details = {
        "t_source_K": float(t_source_K),
        "t_target_K": float(t_target_K),
        "kT_source_kjmol": 1.0 / b_i,
        "kT_target_kjmol": 1.0 / b_j,
        "n_frames": {"source": int(x.shape[0]), "target": int(y.shape[0])},
        "n_atoms": int(x.shape[1]),
        "nonfinite": {"forward": int(bad_f.sum()), "inverse": int(bad_i.sum())},
        "bootstrap": {"n_time_blocks": int(n_blocks), "n_boot": int(n_boot), "seed": int(seed)},
        "autocorrelation_frames": {
            "u_source": M.integrated_autocorr_time(u_x),
            "u_target": M.integrated_autocorr_time(u_y),
        },
        "mean_work_kt": {"forward": float(np.mean(w_f)), "inverse": float(np.mean(w_r))},
        "ramachandran_js_context": floors,
        "min_distance_reference_nm": {
            "source": M.min_interatomic_distance(x.numpy()),
            "target": M.min_interatomic_distance(y.numpy()),
        },
        "roundtrip_frames": int(ok_x.size + ok_y.size),
        "seconds_flow_and_energies": t_flow,
        "seconds_total": time.perf_counter() - t0,
    }
    arrays = {
        "u_source": u_x,
        "u_target": u_y,
        "u_forward": u_tx,
        "u_inverse": u_ti,
        "logdet_forward": ld_f,
        "logdet_inverse": ld_i,
        "work_forward_kt": w_f,
        "work_inverse_kt": w_r,
        "pair_source": a,
        "pair_target": b,
    }
    arrays["_angles"] = angles  # for the figure; not saved
    return metrics, details, arrays


def _sampling_floor(ref: tuple[np.ndarray, np.ndarray], n_other: int, seed: int) -> float:
    """JS expected for a perfect map from sampling noise alone, with these sample sizes.

    Two random halves of the reference give the plug-in bias for sets of n/2 and n/2; the bias
    scales as 1/n_a + 1/n_b, so it is rescaled to the reference's n (phi, psi) pairs against the
    ``n_other`` pairs compared with it.
    (Correlated frames make the true floor somewhat higher.)
    """
    phi, psi = (np.asarray(a).ravel() for a in ref)
    n = phi.shape[0]
    if n < 4:
        return float("nan")
    idx = np.random.default_rng(seed).permutation(n)
    h1, h2 = idx[: n // 2], idx[n // 2 :]
    halves = M.ramachandran_js(phi[h1], psi[h1], phi[h2], psi[h2])
    return halves * (1 / n + 1 / max(n_other, 1)) / (4 / n)


# --------------------------------------------------------------------------- data folder
def _subsample(xyz: np.ndarray, max_frames: int | None) -> np.ndarray:
    """Evenly spaced frames (time order kept) when there are more than ``max_frames``."""
    if max_frames is None or xyz.shape[0] <= max_frames:
        return xyz
    return xyz[np.linspace(0, xyz.shape[0] - 1, max_frames).round().astype(int)]


# A percentile 95% interval needs at least one resample in each 2.5% tail.
MIN_BOOTSTRAP = 40


def check_evaluation_args(
    n_pairs: int, max_frames: int | None, n_boot: int, batch_size: int, out_dir: str | Path
) -> None:
    """Refuse nonsense settings of :func:`evaluate_flow` before any work (CLI flag names)."""
    check_number("--n-pairs", n_pairs, minimum=1)
    check_number("--max-frames", max_frames, minimum=2)
    check_number("--n-boot", n_boot, minimum=MIN_BOOTSTRAP)
    check_number("--batch-size", batch_size, minimum=1)
    check_output_dir(out_dir)


def evaluate_flow(
    flow: torch.nn.Module,
    data_dir: str | Path,
    pair: tuple[int, int] = (0, 1),
    out_dir: str | Path = "evaluation",
    n_pairs: int = 10_000,
    max_frames: int | None = None,
    n_boot: int = 1000,
    batch_size: int = 512,
    seed: int = 0,
    label: str = "flow",
    progress: bool = True,
) -> dict:
    """Evaluate ``flow`` on the replica-exchange data in ``data_dir`` between ladder indices
    ``pair`` = (i, j) (source T_i -> target T_j) and write the results into ``out_dir``.

    ``max_frames`` caps the frames used per temperature (evenly spaced). Returns the metrics dict
    (also in ``out_dir/metrics.json``).
    """
    from moltune.physics.energy import TorchEnergy
    from moltune.physics.geometry import ramachandran_angles
    from moltune.physics.ptdata import load_pt_data

    check_evaluation_args(n_pairs, max_frames, n_boot, batch_size, out_dir)
    data = load_pt_data(data_dir)
    temps = np.asarray(data.temperatures_K, dtype=np.float64)
    i, j = (int(p) for p in pair)
    if not (0 <= i < len(temps) and 0 <= j < len(temps)) or i == j:
        raise InvalidInputError(
            f"--pair {i} {j}: need two different indices into the {len(temps)} temperatures "
            f"{[float(t) for t in temps]} K of {data_dir}"
        )
    t_i, t_j = float(temps[i]), float(temps[j])
    x = _subsample(np.asarray(data.xyz_nm[i]), max_frames)
    y = _subsample(np.asarray(data.xyz_nm[j]), max_frames)
    solvent = str(data.metadata.get("solvent", "obc2"))
    energy = TorchEnergy.from_pdb(data.topology_pdb, solvent=solvent).to(torch.float64)
    md_top = data.md_topology

    def dihedrals(xyz: np.ndarray):
        # (phi, psi) pairs of the finite frames; transformed frames may be NaN
        ok = np.isfinite(xyz.reshape(len(xyz), -1)).all(axis=1)
        if not ok.any():
            return np.zeros(0), np.zeros(0)
        return ramachandran_angles(xyz[ok], md_top)

    log.info("evaluating %s: %.0f K <-> %.0f K on %d + %d frames", label, t_i, t_j, len(x), len(y))
    metrics, details, arrays = evaluate_transport(
        flow,
        energy,
        x,
        y,
        t_i,
        t_j,
        dihedrals=dihedrals,
        n_pairs=n_pairs,
        n_boot=n_boot,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    details.update(
        {
            "label": label,
            "data_dir": str(data_dir),
            "pair": [i, j],
            "solvent": solvent,
            "frames_available": {"source": len(data.xyz_nm[i]), "target": len(data.xyz_nm[j])},
        }
    )
    write_outputs(out_dir, metrics, details, arrays)
    return metrics


def write_outputs(out_dir: str | Path, metrics: dict, details: dict, arrays: dict) -> None:
    """metrics.json, details.json, per_frame.npz, figures and report.md into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", {k: metrics[k] for k in METRIC_KEYS})
    write_json(out / "details.json", details)
    save_npz(out / "per_frame.npz", **{k: v for k, v in arrays.items() if not k.startswith("_")})
    figures = _plots(out, details, arrays)
    write_text(out / "report.md", render_report(metrics, details, figures))


def _plots(out: Path, details: dict, arrays: dict) -> list[str]:
    """The four-panel Ramachandran figure and energy histograms; returns the files written."""
    from moltune.physics import plots

    ts, tt = details["t_source_K"], details["t_target_K"]
    names = {
        "source": f"source {ts:.0f} K",
        "target": f"target {tt:.0f} K",
        "forward": f"T(source) -> {tt:.0f} K",
        "inverse": f"T^-1(target) -> {ts:.0f} K",
    }
    written = []
    angles = arrays.get("_angles") or {}
    if angles:
        panels = {}
        for key in ("source", "target", "forward", "inverse"):
            phi, psi = (np.asarray(a, np.float64).ravel() for a in angles[key])
            ok = np.isfinite(phi) & np.isfinite(psi)
            panels[names[key]] = (phi[ok], psi[ok])
        plots.ramachandran(panels, out / "ramachandran.png")
        written.append("ramachandran.png")
    # one figure per direction: transformed frames against the reference they should match
    for direction, ref in (("forward", "target"), ("inverse", "source")):
        sets = {names[ref]: arrays[f"u_{ref}"], names[direction]: arrays[f"u_{direction}"]}
        sets = {k: np.asarray(v)[np.isfinite(v)] for k, v in sets.items()}
        fname = f"energy_histograms_{direction}.png"
        plots.energy_histograms(sets, out / fname)
        written.append(fname)
    return written


# --------------------------------------------------------------------------- report
def direction_problems(metrics: dict, details: dict) -> dict[str, list[str]]:
    """Plain-words problems of each direction against issue 3's pass marks (empty: fine)."""
    kt = {"forward": details["kT_target_kjmol"], "inverse": details["kT_source_kjmol"]}
    ref = {"forward": "target", "inverse": "source"}
    ess = {"forward": metrics["ess_forward"], "inverse": metrics["ess_inverse"]}
    out: dict[str, list[str]] = {}
    for d in ("forward", "inverse"):
        probs = []
        n_bad = details["nonfinite"][d]
        n_tot = details["n_frames"]["source" if d == "forward" else "target"]
        if n_bad:
            probs.append(f"{n_bad} of {n_tot} transformed frames are non-finite (NaN/inf)")
        e, e_ref = metrics["mean_energy_kjmol"][d], metrics["mean_energy_kjmol"][ref[d]]
        if not math.isfinite(e):
            probs.append("no transformed frame has a finite energy")
        elif abs(e - e_ref) > ENERGY_TOL_KT * kt[d]:
            probs.append(
                f"mean energy {e:.1f} kJ/mol against {e_ref:.1f} kJ/mol for the reference "
                f"({(e - e_ref) / kt[d]:+.1f} kT; pass mark {ENERGY_TOL_KT:g} kT)"
            )
        js = metrics["ramachandran_js"][d]
        if js is not None and not (js <= JS_MAX):
            probs.append(
                f"phi/psi distribution differs from the reference (JS {js:.3f} > {JS_MAX})"
            )
        if ess[d] < 0.01:
            probs.append(f"importance-sampling ESS is only {ess[d]:.2%} of the frames")
        out[d] = probs
    return out


def _p(v: float) -> str:
    """A probability: three decimals, or three significant digits when tiny."""
    return f"{v:.3f}" if v >= 0.001 or v == 0 else f"{v:.2e}"


def _fmt_acc(a: dict) -> str:
    lo, hi = a["ci95"]
    return f"{_p(a['mean'])} (95% interval {_p(lo)} to {_p(hi)}, {a['n_pairs']} pairs)"


def render_report(metrics: dict, details: dict, figures: list[str] | None = None) -> str:
    """report.md: the verdict first, then the figures and numbers that support it."""
    ts, tt = details["t_source_K"], details["t_target_K"]
    label = details.get("label", "flow")
    an, af = metrics["acceptance_naive"], metrics["acceptance_flow"]
    probs = direction_problems(metrics, details)
    improved = af["ci95"][0] > an["ci95"][1]
    fwd, inv = f"forward ({ts:.0f} K -> {tt:.0f} K)", f"inverse ({tt:.0f} K -> {ts:.0f} K)"
    lines = [f"# Transport evaluation: {label}, {ts:.0f} K <-> {tt:.0f} K", ""]
    if label == "identity":
        lines += [
            (
                "This is the identity map, the naive replica swap: it is the control a flow has to "
                "beat, and it transports nothing, so the per-direction checks below describe how far "
                "apart the two temperatures are."
            ),
            "",
        ]
    broken = [name for name, d in ((fwd, "forward"), (inv, "inverse")) if probs[d]]
    if improved and not broken:
        verdict = (
            f"**The transport works.** Swap acceptance through the flow is {_p(af['mean'])} against "
            f"{_p(an['mean'])} for the naive swap, and both directions reproduce the reference "
            "energies, backbone angles and distances within the pass marks."
        )
    elif not broken:
        verdict = (
            f"**The transport is valid but does not help.** Both directions pass the checks, but "
            f"the flow's swap acceptance ({_p(af['mean'])}) is not clearly above the naive "
            f"swap's ({_p(an['mean'])})."
        )
    else:
        what = " and ".join(broken)
        fails = "directions fail" if len(broken) > 1 else "direction fails"
        head = (
            "**The transport helps but is not faithful**" if improved
            else "**The transport does not work**"
        )  # fmt: skip
        verdict = (
            f"{head}: the {what} {fails} the checks below. Swap acceptance through the flow is "
            f"{_p(af['mean'])} against {_p(an['mean'])} for the naive swap."
        )
    lines += [verdict, ""]
    for name, d in ((fwd, "forward"), (inv, "inverse")):
        if probs[d]:
            lines.append(f"- {name[0].upper() + name[1:]} fails: " + "; ".join(probs[d]) + ".")
        else:
            lines.append(f"- {name[0].upper() + name[1:]} passes.")
    me = metrics["mean_energy_kjmol"]
    rama = metrics["ramachandran_js"]
    fl = details.get("ramachandran_js_context") or {}
    js_ref = fl.get("source_vs_target")
    if js_ref is not None and js_ref <= JS_MAX:
        lines += [
            "",
            (
                f"Note: the two reference temperatures differ in phi/psi by only JS {js_ref:.3f}, "
                f"below the {JS_MAX} pass mark, so the Ramachandran check cannot tell a good map from "
                "the identity here; the energies, ESS and acceptance carry the verdict."
            ),
        ]

    def js(v):
        return "n/a" if v is None else f"{v:.4f}"

    lines += [
        "",
        "## Numbers",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| acceptance, naive swap | {_fmt_acc(an)} |",
        f"| acceptance, flow swap | {_fmt_acc(af)} |",
        f"| Jeffreys divergence | {metrics['jeffreys_kt']:.3f} kT |",
        f"| mean energy source / target (kJ/mol) | {me['source']:.2f} / {me['target']:.2f} |",
        f"| mean energy T(source) / T^-1(target) (kJ/mol) | {me['forward']:.2f} / {me['inverse']:.2f} |",
        f"| kT source / target (kJ/mol) | {details['kT_source_kjmol']:.3f} / {details['kT_target_kjmol']:.3f} |",
        f"| normalised ESS forward / inverse | {metrics['ess_forward']:.4f} / {metrics['ess_inverse']:.4f} |",
        f"| Ramachandran JS forward / inverse | {js(rama['forward'])} / {js(rama['inverse'])} |",
        f"| Ramachandran JS source vs target (identity map) | {js(fl.get('source_vs_target'))} |",
        (
            f"| JS expected from sampling noise alone (perfect map) forward / inverse | "
            f"{js(fl.get('forward'))} / {js(fl.get('inverse'))} |"
        ),
        (
            f"| min interatomic distance forward / inverse (nm) | "
            f"{metrics['min_distance_nm']['forward']:.4f} / {metrics['min_distance_nm']['inverse']:.4f} |"
        ),
        (
            f"| min interatomic distance in the references (nm) | "
            f"{details['min_distance_reference_nm']['source']:.4f} / "
            f"{details['min_distance_reference_nm']['target']:.4f} |"
        ),
        f"| non-finite fraction | {metrics['nonfinite_fraction']:.4g} |",
        f"| frames source / target | {details['n_frames']['source']} / {details['n_frames']['target']} |",
        "",
        (
            f"Round-trip RMSD T^-1(T(x)) - x: {metrics['reconstruction_rmsd_nm']:.2e} nm. This only "
            "tests that the map is invertible in practice; it says nothing about transport quality."
        ),
        "",
        (
            "Pairs are formed from held-out frames of different time blocks; the 95% intervals come "
            f"from a bootstrap over {details['bootstrap']['n_time_blocks']} time blocks "
            f"({details['bootstrap']['n_boot']} resamples), which accounts for frames shared between "
            "pairs and for correlation between consecutive frames."
        ),
        "",
    ]
    for f in figures or []:
        lines += [f"![{f}]({f})", ""]
    return "\n".join(lines)


def metrics_to_log(metrics: dict) -> dict[str, Any]:
    """Flat view (acceptance means etc.) for printing on the command line."""
    return {
        "acceptance_naive": metrics["acceptance_naive"]["mean"],
        "acceptance_flow": metrics["acceptance_flow"]["mean"],
        "acceptance_flow_ci95": metrics["acceptance_flow"]["ci95"],
        "jeffreys_kt": metrics["jeffreys_kt"],
        "nonfinite_fraction": metrics["nonfinite_fraction"],
    }
