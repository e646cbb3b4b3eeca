"""What a flow-PT run's records say: walker history, round trips, acceptance, ESS per CPU hour.

The walker history is rebuilt from the ``ptdata`` swap arrays and the skip records; round trips
are counted by :func:`advance_round_trips`, which ``moltune.flow.sampler.FlowPT`` also uses
online. Autocorrelation and batch means come from ``moltune.physics.timeseries``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from moltune.common.errors import InvalidInputError
from moltune.flow.pt_sampler.plan import KIND_SKIP
from moltune.flow.pt_sampler.records import read_records, read_sampler_meta

__all__ = [
    "BATCH_PS",
    "advance_round_trips",
    "batch_means_rate",
    "count_round_trips",
    "observable_series",
    "sampler_statistics",
    "walker_history",
]


def walker_history(
    first_frame_walkers: np.ndarray,
    first_frame_time_ps: float,
    swap_time_ps: np.ndarray,
    swap_accepted: np.ndarray,
    skip_records: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Replica (walker) at each temperature after every production swap event, [E, K].

    Rebuilt from the standard PT arrays: the walkers of the first saved frame (which precede the
    swap of its own step) are carried back to the start of production through the events before
    it, then forward through every event (neighbour pairs, then the accepted skips of
    ``skip_records`` with keys event_time_ps, i, j, accepted, in the order tried).
    """
    swap_time_ps = np.asarray(swap_time_ps, np.float64)
    acc = np.asarray(swap_accepted)
    skips: dict[float, list[tuple[int, int]]] = {}
    if skip_records is not None:
        for t, i, j, a in zip(skip_records["time_ps"], skip_records["i"], skip_records["j"],
                              skip_records["accepted"]):  # fmt: skip
            if a:
                skips.setdefault(float(t), []).append((int(i), int(j)))

    def event_swaps(e: int) -> list[tuple[int, int]]:
        out = [(i, i + 1) for i in np.nonzero(acc[e] == 1)[0]]
        return out + skips.get(float(swap_time_ps[e]), [])

    w = np.asarray(first_frame_walkers).copy()
    before = np.nonzero(swap_time_ps < first_frame_time_ps)[0]
    for e in before[::-1]:
        for i, j in reversed(event_swaps(e)):
            w[[i, j]] = w[[j, i]]
    hist = np.empty((len(swap_time_ps), len(w)), dtype=w.dtype)
    for e in range(len(swap_time_ps)):
        for i, j in event_swaps(e):
            w[[i, j]] = w[[j, i]]
        hist[e] = w
    return hist


def advance_round_trips(last_end: np.ndarray, history: np.ndarray) -> np.ndarray:
    """Carry the walkers' round-trip states through swap events; returns trips [W, C] completed.

    ``history[e, k, c]`` is the walker at temperature k after event e in chain c;
    ``last_end[w, c]`` (updated in place) is walker w's state: -1 not yet at the lowest
    temperature, 0 left it, 1 reached the highest since. A walker reaching the bottom in state 1
    completes a round trip. Vectorised over events: within one walker's time-ordered visits to
    the two ends, a trip is a bottom visit right after a top visit that followed a bottom visit
    (or the starting state).
    """
    h = np.asarray(history)
    n_w, n_c = last_end.shape
    n_e = h.shape[0]
    if n_e == 0:
        return np.zeros((n_w, n_c), int)
    rows = np.broadcast_to(np.arange(n_e)[:, None], (n_e, n_c)).ravel()
    cols = np.broadcast_to(np.arange(n_c)[None, :], (n_e, n_c)).ravel()
    walker = np.concatenate([h[:, 0, :].ravel(), h[:, -1, :].ravel()])
    chain = np.concatenate([cols, cols])
    is_top = np.repeat([False, True], n_e * n_c)
    order = np.lexsort((np.concatenate([rows, rows]), walker, chain))
    walker, chain, is_top = walker[order], chain[order], is_top[order]
    group = chain * n_w + walker
    n = len(group)
    first = np.r_[True, group[1:] != group[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    init = last_end.T.ravel()[group]
    bottoms_before = np.cumsum(~is_top) - (~is_top)
    anchored = (init >= 0) | (bottoms_before > bottoms_before[start])  # state >= 0 before event
    prev_top_anchored = np.r_[False, is_top[:-1] & anchored[:-1]]
    trip = ~is_top & np.where(first, init == 1, prev_top_anchored)
    last = np.r_[group[1:] != group[:-1], True]
    after = np.where(is_top, np.where(anchored, 1, -1), 0)
    last_end[walker[last], chain[last]] = after[last]
    return np.bincount(group[trip], minlength=n_c * n_w).reshape(n_c, n_w).T


def count_round_trips(history: np.ndarray) -> np.ndarray:
    """Round trips per walker from a walker history [E, K] (walker at temperature k, row e).

    A round trip is completed when a walker that went from the lowest temperature to the highest
    comes back to the lowest (:func:`advance_round_trips`). Only the walker at the bottom at the
    first row starts 'from the bottom'; others must reach it first. Returns counts [n_walkers].
    """
    h = np.asarray(history)
    if h.size == 0:
        return np.zeros(0, int)
    last = np.full((int(h.max()) + 1, 1), -1, np.int8)
    return advance_round_trips(last, h[:, :, None])[:, 0]


def _pair_stats(i: int, j: int, sel: np.ndarray, rec: dict, temps) -> dict:
    d = rec["log_alpha"][sel]
    finite = np.isfinite(d)
    alpha = np.exp(np.minimum(np.where(finite, d, -np.inf), 0.0))
    n = int(sel.sum())
    acc = rec["accepted"][sel].astype(float)
    return {
        "temperatures_K": [temps[i], temps[j]],
        "attempts": n,
        "accepted": int(acc.sum()),
        "acceptance": float(acc.mean()) if n else math.nan,
        "acceptance_se": float(math.sqrt(max(acc.mean() * (1 - acc.mean()), 0) / n))
        if n
        else math.nan,
        "mean_metropolis_probability": float(alpha.mean()) if n else math.nan,
        "mean_log_acceptance": float(d[finite].mean()) if finite.any() else math.nan,
        "median_log_acceptance": float(np.median(d[finite])) if finite.any() else math.nan,
        "nonfinite": int(rec["nonfinite"][sel].sum()),
    }


def observable_series(xyz_nm: np.ndarray, md_topology, residue: int = 0) -> dict[str, np.ndarray]:
    """Slow observables per frame: left-handed region (phi > 0), alpha-region psi, and a cis
    peptide bond anywhere (|omega| < pi/2; rarer and slower than both at 300 K).

    ``residue`` picks the phi (and psi) column (AA zwitterion: the one phi of residue 2).
    """
    from moltune.physics.geometry import backbone_dihedrals, peptide_bond_omega

    phi, psi = backbone_dihedrals(xyz_nm, md_topology)
    if phi.shape[1] == 0:
        raise InvalidInputError("the peptide has no backbone phi torsion")
    r = min(residue, phi.shape[1] - 1)
    s = min(residue, psi.shape[1] - 1)
    omega = peptide_bond_omega(xyz_nm, md_topology)
    return {
        "phi_positive": (phi[:, r] > 0).astype(np.float64),
        "psi_alpha": ((psi[:, s] > -2.0) & (psi[:, s] < 1.0)).astype(np.float64),
        "cis_peptide": (np.abs(omega) < np.pi / 2).any(axis=1).astype(np.float64),
    }


#: Batch length (ps) of the batch-means ESS: far above tau of phi > 0 at 300 K (0.2-6 ps) and at
#: the top of the ladder (4-10 ps), so batches are nearly independent.
BATCH_PS = 50.0
MIN_BATCHES = 4


def batch_means_rate(series: np.ndarray, dt_ps: float, cpu_h: float) -> dict | None:
    """ESS and ESS per CPU hour of one run from ``BATCH_PS`` batches (None below 4 batches)."""
    from moltune.physics.timeseries import batch_means

    frames = max(1, round(BATCH_PS / dt_ps))
    if len(series) // frames < MIN_BATCHES:
        return None
    est = batch_means([series], frames)
    ok = cpu_h > 0 and math.isfinite(est.ess)
    return {"batch_ps": frames * dt_ps, "n_batches": est.n_batches, "ess": est.ess,
            "ess_error": est.ess_error,
            "ess_per_cpu_hour": est.ess / cpu_h if ok else math.nan,
            "ess_per_cpu_hour_error": est.ess_error / cpu_h if ok else math.nan}  # fmt: skip


def sampler_statistics(out_dir: str | Path, observable_residue: int = 0) -> dict:
    """Per-pair acceptance, flow statistics, round trips, CPU time, 300 K observables of a run."""
    from moltune.physics.ptdata import load_pt_data
    from moltune.physics.timeseries import integrated_autocorrelation, n_transitions

    out = Path(out_dir)
    data = load_pt_data(out)
    temps = [float(t) for t in data.temperatures_K]
    k = len(temps)
    meta = read_sampler_meta(out) or {}
    rec = read_records(out)
    pairs: dict[str, dict] = {}
    for i in range(k - 1):
        tried = data.swap_accepted[:, i] >= 0
        a = data.swap_accepted[tried, i].astype(float)
        sel = (rec["i"] == i) & (rec["j"] == i + 1)
        st = _pair_stats(i, i + 1, sel, rec, temps) if sel.any() else {
            "temperatures_K": [temps[i], temps[i + 1]], "attempts": int(tried.sum()),
            "accepted": int(a.sum()),
            "acceptance": float(a.mean()) if a.size else math.nan,
            "acceptance_se": float(math.sqrt(a.mean() * (1 - a.mean()) / a.size)) if a.size
            else math.nan,
        }  # fmt: skip
        st["swap"] = meta.get("plan", {}).get(f"{i}-{i + 1}", "plain")
        pairs[f"{i}-{i + 1}"] = st
    for i, j in {(int(a), int(b)) for a, b, kd in zip(rec["i"], rec["j"], rec["kind"])
                 if kd == KIND_SKIP}:  # fmt: skip
        sel = (rec["i"] == i) & (rec["j"] == j)
        pairs[f"{i}-{j}"] = {**_pair_stats(i, j, sel, rec, temps), "swap": "skip"}

    production_ps = float(data.swap_time_ps[-1]) if data.swap_time_ps.size else 0.0
    trips = np.zeros(0, int)
    if data.n_frames and data.swap_time_ps.size:
        skip_sel = rec["kind"] == KIND_SKIP
        hist = walker_history(
            np.asarray([data.replica_index[kk][0] for kk in range(k)]),
            float(data.time_ps[0]), data.swap_time_ps, data.swap_accepted,
            {key: rec[key][skip_sel] for key in ("time_ps", "i", "j", "accepted")},
        )  # fmt: skip
        trips = count_round_trips(hist)
    cpu_s = float(sum(s["cpu_s"] for s in meta.get("segments", [])))
    dt_save = float(data.metadata.get("save_interval_ps", 1.0))
    obs = {}
    if data.n_frames:
        series = observable_series(data.xyz_nm[0], data.md_topology, observable_residue)
        series["energy_kjmol"] = data.energy_kjmol[0]
        for name, s in series.items():
            est = integrated_autocorrelation(s).as_dict()
            est["tau_ps"] = est["tau"] * dt_save
            est["tau_ps_error"] = est["tau_error"] * dt_save
            est["transitions"] = n_transitions(s) if name != "energy_kjmol" else None
            hours = cpu_s / 3600.0
            est["ess_per_cpu_hour"] = est["ess"] / hours if hours > 0 else math.nan
            est["ess_per_cpu_hour_error"] = est["ess_error"] / hours if hours > 0 else math.nan
            est["batch_means"] = batch_means_rate(s, dt_save, hours)
            obs[name] = est
    flow_cpu = float(rec["flow_cpu_s"])
    return {
        "temperatures_K": temps,
        "flow": meta.get("flow"),
        "plan": meta.get("plan"),
        "production_ps": production_ps,
        "n_frames": data.n_frames,
        "save_interval_ps": dt_save,
        "pairs": pairs,
        "round_trips": int(trips.sum()),
        "round_trips_per_walker": trips.tolist(),
        "round_trips_per_ns": float(trips.sum() / (production_ps / 1000.0))
        if production_ps
        else math.nan,
        "cpu_s": cpu_s,
        "setup_cpu_s": float(sum(s.get("setup_cpu_s", 0.0) for s in meta.get("segments", []))),
        "cpu_s_per_ns": cpu_s / (production_ps / 1000.0) if production_ps else math.nan,
        "flow_cpu_s": flow_cpu,
        "swap_energy_cpu_s": float(rec["energy_cpu_s"]),
        "swap_move_cpu_s": float(rec["move_cpu_s"]),
        "replica_steps": int(sum(s["steps"] for s in meta.get("segments", [])) * k),
        "flow_cpu_fraction": flow_cpu / cpu_s if cpu_s > 0 else math.nan,
        "flow_calls": int(rec["flow_calls"]),
        "nonfinite_proposals": int(np.sum(rec["nonfinite"])),
        "observables_T0": obs,
        "cpu_note": "process CPU time of the sampling loops (OpenMM in-process + flow + energies), "
        "without one-off setup (setup_cpu_s: force field, energy kernel JIT, first flow call); "
        "with --workers the replicas' CPU in the worker processes is not counted",
    }
