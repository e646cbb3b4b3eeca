"""Flow-enhanced parallel tempering of a peptide: OpenMM replicas, swaps through a transport flow.

Why here (``moltune.flow``) and not in ``moltune.physics``: the sampler needs both the OpenMM
replica exchange (physics) and the flows (``moltune.flow.swaps``, ``checkpoint``), and flow
already depends on physics; putting it in flow keeps that one direction. The generic batched core
``moltune.flow.sampler.FlowPT`` serves toy systems with torch propagators (its double-well test
shows exactness); this module drives the OpenMM replicas and the on-disk PT layout instead, with
the same acceptance from ``moltune.flow.swaps``.

Move. Replicas are propagated by ``moltune.physics.replica_exchange`` (Langevin, 1 fs, 1/ps).
At each swap event the neighbour pairs of that event's parity are tried; a pair (i < j) the flow
serves proposes g(x, y) = (T^-1(y), T(x)) and is accepted with min(1, exp(D)), D from
``moltune.flow.swaps.propose_flow_swap`` with all four energies from ``TorchEnergy`` (float64) so
that D is exact for one energy function (it equals OpenMM's to ~1e-4 kJ/mol). After an accepted
flow swap each replica continues from its new coordinates with velocities drawn from the
integrator's own stationary p(v | x) in the local harmonic approximation
(``velocities="harmonic"``, the default, :func:`moltune.physics.integrator.langevin_middle_velocities`),
from plain Maxwell-Boltzmann (``"redraw"``) or kept (``"keep"``). All three leave p(x) x MB(v)
invariant for exact dynamics, but OpenMM's ``LangevinMiddleIntegrator`` stores velocities
correlated with positions, and at 1 fs (no constraints) the stiff bonds and angles notice:
measured on AA, "redraw" leaves bond + angle energy about 1 kT above plain PT at every
temperature (gone at 0.5 fs) and "keep" is far worse (+8.5 kJ/mol at 300 K, +45 at 1000 K).
"harmonic" is exact for harmonic modes, which the stiff ones nearly are: with it, 1 fs flow-PT's
bond energies match plain PT's at every temperature (``benchmarks/pt_energy_terms.py``). Pairs
the flow does not serve use the plain swap (velocities rescaled). Optional skip pairs (i, j)
with j > i + 1 are tried every ``skip_every`` events after the neighbour pairs. One uniform number per tried pair comes from the run's swap RNG, so a run is
reproducible and resumes exactly; with no flow the run *is* ``replica_exchange.simulate``.

Hook. :class:`FlowSwapMove` is passed to ``replica_exchange.simulate(..., swap_move=move)``
(the ``replica_exchange.SwapMove`` signature); its ``flush(out, chunk_index)`` writes this
module's per-chunk records just before the chunk and the state they belong to.

Outputs (in addition to the ``moltune.physics.ptdata`` layout, which stays readable by
``load_pt_data``): ``sampler.json`` (flow, swap plan, CPU time of every call),
``chunks/flowswap_NNNNNN.npz`` (one row per production swap attempt: event, time_ps, i, j, kind,
log_alpha D, accepted, nonfinite; flow and energy CPU seconds of the chunk),
``sampler_stats.json`` (per-pair acceptance, flow statistics, round trips, CPU) and
``plots/sampler.png``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moltune.common.errors import InvalidInputError, UserError
from moltune.common.io import save_npz, write_json

log = logging.getLogger(__name__)

SAMPLER_FILE = "sampler.json"
STATS_FILE = "sampler_stats.json"
RECORD_PREFIX = "flowswap_"
KIND_PLAIN, KIND_FLOW, KIND_SKIP = 0, 1, 2
KIND_NAMES = {KIND_PLAIN: "plain", KIND_FLOW: "flow", KIND_SKIP: "skip"}
#: Velocities after an accepted flow swap (see the module doc); the first is the default.
VELOCITY_MODES = ("harmonic", "redraw", "keep")
RECORD_KEYS = ("event", "time_ps", "i", "j", "kind", "log_alpha", "accepted", "nonfinite")
TEMP_TOL_K = 1e-6

__all__ = [
    "FlowSwapMove",
    "count_round_trips",
    "plan_swaps",
    "read_records",
    "sample",
    "sampler_statistics",
    "walker_history",
]


# ------------------------------------------------------------------------------------ swap plan
def _same(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) <= TEMP_TOL_K


def plan_swaps(
    temperatures_K: list[float],
    flow_info: dict | None,
    skip_pairs: list[tuple[int, int]] = (),
    has_flow: bool = True,
) -> dict[tuple[int, int], str]:
    """Which pairs go through the flow: {(i, j): "trained" | "conditional" | "any" | "plain"}.

    ``flow_info`` is ``load_flow``'s info (``temperatures_K`` and trained index ``pairs``); None
    means a flow meant for every pair (identity, a test flow): "any". A pair is "trained" when
    its temperatures are a trained pair's; "conditional" when the flow was trained on several
    pairs (temperature-conditioned) and both temperatures lie in its training range. Neighbour
    pairs the flow does not serve are "plain"; a skip pair it does not serve is an error.
    """
    k = len(temperatures_K)
    plan: dict[tuple[int, int], str] = {}
    trained: list[tuple[float, float]] = []
    lo = hi = None
    if flow_info is not None:
        t = [float(v) for v in flow_info.get("temperatures_K", [])]
        trained = [(t[a], t[b]) for a, b in flow_info.get("pairs", [])]
        lo, hi = (min(t), max(t)) if t else (None, None)

    def served(i: int, j: int) -> str:
        if not has_flow:
            return "plain"
        if flow_info is None:
            return "any"
        ti, tj = temperatures_K[i], temperatures_K[j]
        if any(_same(ti, a) and _same(tj, b) for a, b in trained):
            return "trained"
        if len(trained) > 1 and lo is not None and lo - TEMP_TOL_K <= ti and tj <= hi + TEMP_TOL_K:
            return "conditional"
        return "plain"

    for i in range(k - 1):
        plan[(i, i + 1)] = served(i, i + 1)
    for i, j in skip_pairs:
        i, j = int(i), int(j)
        if not 0 <= i < j < k or j == i + 1:
            raise InvalidInputError(
                f"skip pair ({i}, {j}) must be two temperature indices i < j - 1 of a ladder of {k}"
            )
        how = served(i, j)
        if how == "plain":
            raise UserError(
                f"the flow is not trained for the skip {temperatures_K[i]:g} <-> "
                f"{temperatures_K[j]:g} K (trained pairs: {trained or 'none'}); a plain swap there "
                "is almost never accepted"
            )
        plan[(i, j)] = how
    return plan


# ------------------------------------------------------------------------------------- the move
@dataclass
class _Buffer:
    rows: dict[str, list] = field(default_factory=lambda: {k: [] for k in RECORD_KEYS})
    flow_cpu_s: float = 0.0
    energy_cpu_s: float = 0.0
    move_cpu_s: float = 0.0
    flow_calls: int = 0


class FlowSwapMove:
    """The swap move of one flow-PT run (called by ``replica_exchange``'s loop, see module doc).

    ``flow`` maps T_i -> T_j as ``flow(x, t_i, t_j)`` / ``flow.inverse(y, t_i, t_j)``; ``energy``
    maps [B, N, 3] nm (float64) to U [B] kJ/mol (differentiable for ``velocities="harmonic"``);
    ``masses_amu`` [N] for new velocities; ``plan`` from :func:`plan_swaps`; ``n_eq_steps`` and
    ``dt_ps`` (the integrator's step, also used by the velocity draw) tell production events.
    """

    def __init__(
        self,
        flow: torch.nn.Module,
        energy,
        temperatures_K: list[float],
        plan: dict[tuple[int, int], str],
        masses_amu: np.ndarray,
        n_eq_steps: int,
        dt_ps: float,
        skip_every: int = 1,
        velocities: str = "harmonic",
    ):
        from moltune.physics.integrator import torch_gradient
        from moltune.physics.units import KB_KJMOL, beta

        if velocities not in VELOCITY_MODES:
            raise InvalidInputError(
                f"velocities must be one of {', '.join(VELOCITY_MODES)}, got {velocities!r}"
            )
        self.velocities = velocities
        self.grad_fn = torch_gradient(energy)

        self.flow = flow.eval()
        self.energy = energy
        self.temps = [float(t) for t in temperatures_K]
        self.betas = [float(beta(t)) for t in self.temps]
        self.plan = dict(plan)
        self.neighbour_flow = {p for p, how in plan.items() if p[1] == p[0] + 1 and how != "plain"}
        self.skips = [p for p in plan if p[1] > p[0] + 1]
        self.skip_every = max(1, int(skip_every))
        self.n_eq, self.dt_ps = int(n_eq_steps), float(dt_ps)
        # kJ/mol / amu = (nm/ps)^2: Maxwell-Boltzmann standard deviation per atom at each T
        self.masses = np.asarray(masses_amu, dtype=np.float64)
        self.kts = [KB_KJMOL * t for t in self.temps]
        self.v_sigma = [np.sqrt(kt / self.masses)[:, None] for kt in self.kts]
        self.buf = _Buffer()

    # -- flow proposals (batched over the pairs of one event when one flow serves them all)
    def _propose(self, pos: np.ndarray, pairs: list[tuple[int, int]]):
        from moltune.flow.swaps import propose_flow_swap

        idx_i = [p[0] for p in pairs]
        idx_j = [p[1] for p in pairs]
        x = torch.as_tensor(pos[idx_i], dtype=torch.float64)
        y = torch.as_tensor(pos[idx_j], dtype=torch.float64)
        t_i = torch.tensor([self.temps[i] for i in idx_i], dtype=torch.float64)
        t_j = torch.tensor([self.temps[j] for j in idx_j], dtype=torch.float64)
        b_i = np.asarray([self.betas[i] for i in idx_i])
        b_j = np.asarray([self.betas[j] for j in idx_j])
        c0 = time.process_time()
        timed = _TimedFlow(self.flow)
        prop = propose_flow_swap(timed, self.energy, x, y, t_i, t_j, b_i, b_j)
        self.buf.flow_cpu_s += timed.cpu_s
        self.buf.energy_cpu_s += time.process_time() - c0 - timed.cpu_s
        self.buf.flow_calls += 2
        return prop

    def _new_velocities(self, k: int, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Velocities (nm/ps) for new coordinates x at temperature slot k (``self.velocities``)."""
        if self.velocities == "redraw":
            return rng.standard_normal(x.shape) * self.v_sigma[k]
        from moltune.physics.integrator import langevin_middle_velocities

        c0 = time.process_time()
        v = langevin_middle_velocities(self.grad_fn, x, self.masses, self.kts[k], self.dt_ps, rng)
        self.buf.energy_cpu_s += time.process_time() - c0
        return v

    def __call__(self, replicas, state, temps, betas, energies) -> np.ndarray:
        """One swap event (``replica_exchange.SwapMove``): int8 [K-1] for the neighbour pairs."""
        c0 = time.process_time()
        try:
            return self._event(replicas, state, temps, betas, energies)
        finally:
            self.buf.move_cpu_s += time.process_time() - c0

    def _event(self, replicas, state, temps, betas, energies) -> np.ndarray:
        from moltune.physics.replica_exchange import (
            metropolis_accept,
            swap_log_acceptance,
            swap_pairs,
        )

        k = len(temps)
        result = np.full(k - 1, -1, np.int8)
        event = state.swap_events
        production = state.step > self.n_eq
        t_ps = (state.step - self.n_eq) * self.dt_ps
        pairs = swap_pairs(event, k)
        flow_pairs = [p for p in pairs if p in self.neighbour_flow]
        skips = self.skips if event % self.skip_every == 0 else []
        pos = vel = None
        if flow_pairs or skips:
            pos, vel = replicas.get_states()
            pos, vel = pos.astype(np.float64), vel.astype(np.float64)
        prop = self._propose(pos, flow_pairs) if flow_pairs else None
        changed: set[int] = set()
        plain_accepted = []
        for i, j in pairs:
            if (i, j) in self.neighbour_flow:
                r = flow_pairs.index((i, j))
                d = float(prop.log_alpha[r])
                ok = metropolis_accept(d, state.rng)
                if ok:
                    pos[i] = prop.x_to_i[r].numpy()
                    pos[j] = prop.y_to_j[r].numpy()
                    changed.update((i, j))
                kind, bad = KIND_FLOW, bool(prop.nonfinite[r])
            else:
                d = swap_log_acceptance(betas[i], betas[j], energies[i], energies[j])
                ok = metropolis_accept(d, state.rng)
                if ok:
                    plain_accepted.append((i, j))
                kind, bad = KIND_PLAIN, not math.isfinite(d)
            result[i] = int(ok)
            if ok:
                state.walkers[[i, j]] = state.walkers[[j, i]]
            if production:
                self._record(event, t_ps, i, j, kind, d, ok, bad)
        if plain_accepted:
            if pos is None:
                pos, vel = replicas.get_states()
                pos, vel = pos.astype(np.float64), vel.astype(np.float64)
            for i, j in plain_accepted:
                pi, vi = pos[i].copy(), vel[i].copy()
                pos[i], vel[i] = pos[j], vel[j] * math.sqrt(temps[i] / temps[j])
                pos[j], vel[j] = pi, vi * math.sqrt(temps[j] / temps[i])
            plain_changed = {s for p in plain_accepted for s in p}
        else:
            plain_changed = set()
        for i, j in skips:
            sp = self._propose(pos, [(i, j)])
            d = float(sp.log_alpha[0])
            ok = metropolis_accept(d, state.rng)
            if ok:
                pos[i], pos[j] = sp.x_to_i[0].numpy(), sp.y_to_j[0].numpy()
                changed.update((i, j))
                state.walkers[[i, j]] = state.walkers[[j, i]]
            if production:
                self._record(event, t_ps, i, j, KIND_SKIP, d, ok, bool(sp.nonfinite[0]))
        for s in sorted(changed) if self.velocities != "keep" else ():
            vel[s] = self._new_velocities(s, pos[s], state.rng)
        updates = {s: (pos[s], vel[s]) for s in sorted(changed | plain_changed)}
        if updates:
            replicas.set_states(updates)
        return result

    def _record(self, event, t_ps, i, j, kind, d, ok, bad) -> None:
        for key, v in zip(RECORD_KEYS, (event, t_ps, i, j, kind, d, int(ok), bool(bad))):
            self.buf.rows[key].append(v)

    def flush(self, out: Path, chunk_index: int) -> None:
        """Write this chunk's attempt records (atomic); called before the chunk and state."""
        rows = self.buf.rows
        save_npz(
            Path(out) / "chunks" / f"{RECORD_PREFIX}{chunk_index:06d}.npz",
            event=np.asarray(rows["event"], np.int64),
            time_ps=np.asarray(rows["time_ps"], np.float64),
            i=np.asarray(rows["i"], np.int16),
            j=np.asarray(rows["j"], np.int16),
            kind=np.asarray(rows["kind"], np.int8),
            log_alpha=np.asarray(rows["log_alpha"], np.float64),
            accepted=np.asarray(rows["accepted"], np.int8),
            nonfinite=np.asarray(rows["nonfinite"], bool),
            flow_cpu_s=np.float64(self.buf.flow_cpu_s),
            energy_cpu_s=np.float64(self.buf.energy_cpu_s),
            move_cpu_s=np.float64(self.buf.move_cpu_s),
            flow_calls=np.int64(self.buf.flow_calls),
        )
        self.buf = _Buffer()


class _TimedFlow(torch.nn.Module):
    """Wraps a flow and adds up the process CPU seconds spent in its two directions."""

    def __init__(self, flow: torch.nn.Module):
        super().__init__()
        self.inner = flow
        self.cpu_s = 0.0

    def forward(self, x, t_s, t_t):
        c = time.process_time()
        try:
            return self.inner(x, t_s, t_t)
        finally:
            self.cpu_s += time.process_time() - c

    def inverse(self, y, t_s, t_t):
        c = time.process_time()
        try:
            return self.inner.inverse(y, t_s, t_t)
        finally:
            self.cpu_s += time.process_time() - c


# ----------------------------------------------------------------------------------- the driver
def flow_fingerprint(flow: torch.nn.Module | None) -> str | None:
    """sha256 over the flow's class and parameters/buffers: a resumed run must use the same map."""
    if flow is None:
        return None
    h = hashlib.sha256(type(flow).__name__.encode())
    for name, t in sorted(flow.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _masses_amu(system) -> np.ndarray:
    from openmm import unit

    return np.asarray(
        [
            system.getParticleMass(i).value_in_unit(unit.dalton)
            for i in range(system.getNumParticles())
        ]
    )


def _check_topology(flow_info: dict | None, peptide) -> None:
    top = (flow_info or {}).get("topology")
    if top is None:
        return
    a = [(x.name, x.residue.name) for x in top.atoms()]
    b = [(x.name, x.residue.name) for x in peptide.topology.atoms()]
    if a != b:
        raise UserError(
            f"the flow was trained on another molecule ({len(a)} atoms) than the peptide "
            f"{peptide.sequence} ({len(b)} atoms)"
        )


def sample(
    peptide_spec: Any,
    out_dir: str | Path,
    cfg,
    flow: torch.nn.Module | None = None,
    flow_info: dict | None = None,
    skip_pairs: list[tuple[int, int]] = (),
    skip_every: int = 1,
    progress: bool = True,
    stop_after_chunks: int | None = None,
    observable_residue: int = 0,
    velocities: str = "harmonic",
) -> dict:
    """Run (or resume) flow-enhanced PT into ``out_dir``; returns :func:`sampler_statistics`.

    ``cfg`` is a ``replica_exchange.PTConfig``; ``flow`` None gives plain PT (exactly
    ``replica_exchange.simulate``). ``flow_info`` as from ``load_flow`` (decides which pairs the
    flow serves, :func:`plan_swaps`; None: every pair). ``skip_pairs`` index pairs (i, j), j > i+1.
    """
    from moltune.physics.forcefield import create_system
    from moltune.physics.peptide import Peptide, load_peptide
    from moltune.physics.ptdata import STATE_FILE
    from moltune.physics.replica_exchange import simulate

    out = Path(out_dir)
    if skip_pairs and flow is None:
        raise UserError(
            "--skip needs --flow (a plain 300 <-> 1000 K swap is almost never accepted)"
        )
    peptide = peptide_spec if isinstance(peptide_spec, Peptide) else None
    if peptide is None:
        peptide = load_peptide(str(peptide_spec), solvent=cfg.solvent)
    _check_topology(flow_info, peptide)
    temps = list(cfg.temperatures_K)
    plan = plan_swaps(temps, flow_info, list(skip_pairs), has_flow=flow is not None)
    plan_json = {f"{i}-{j}": how for (i, j), how in plan.items()}
    identity = {
        "flow_fingerprint": flow_fingerprint(flow),
        "plan": plan_json,
        "skip_every": int(skip_every) if skip_pairs else None,
    }
    sampler_path = out / SAMPLER_FILE
    if (out / STATE_FILE).is_file():
        stored = json.loads(sampler_path.read_text()) if sampler_path.is_file() else None
        stored_id = (
            {k: stored.get(k) for k in identity}
            if stored
            else {"flow_fingerprint": None, "plan": {f"{i}-{i + 1}": "plain" for i in range(len(temps) - 1)},
                  "skip_every": None}
        )  # fmt: skip
        if stored_id != identity:
            raise UserError(
                f"{str(out)!r} holds a run with another flow or swap plan; resume with the same "
                "--flow/--skip or choose a new --out"
            )
        n_chunks = int(np.load(out / STATE_FILE)["n_chunks"])
        for stale in (out / "chunks").glob(f"{RECORD_PREFIX}*.npz"):
            if int(stale.stem[len(RECORD_PREFIX) :]) >= n_chunks:
                stale.unlink()
        meta = stored or {}
    else:
        meta = {}
    meta.update(
        identity,
        format="moltune-flow-pt-1",
        flow=None if flow is None else (flow_info or {}).get("path", type(flow).__name__),
        flow_name=None if flow is None else (flow_info or {}).get("name", type(flow).__name__),
        flow_trained_pairs_K=None if not flow_info else [
            [flow_info["temperatures_K"][a], flow_info["temperatures_K"][b]]
            for a, b in flow_info.get("pairs", [])
        ],
        swap_scheme=(
            "plain PT: neighbours, alternating even/odd, Metropolis on potential energies, "
            "velocities rescaled" if flow is None else
            "neighbours alternating even/odd (+ skips); pairs the flow serves propose "
            "(T^-1(y), T(x)), accepted with min(1, exp(D)), D with log|det J| of both directions, "
            f"TorchEnergy float64; velocities after an accepted flow swap: {velocities}; other "
            "pairs plain (velocities rescaled)"
        ),
        observable_residue=observable_residue,
    )  # fmt: skip
    meta.setdefault("segments", [])
    out.mkdir(parents=True, exist_ok=True)
    write_json(sampler_path, meta)

    torch_threads = torch.get_num_threads()
    setup0 = time.process_time()
    if flow is None:
        c0, w0 = time.process_time(), time.perf_counter()
        res = simulate(peptide, out, cfg, progress=progress, stop_after_chunks=stop_after_chunks)
    else:
        from threadpoolctl import threadpool_limits

        from moltune.physics.energy import TorchEnergy

        # one swap of one molecule: threads only add overhead (and CPU time) to its small torch
        # calls and to the 3N x 3N eigendecompositions of the velocity draw (numpy's BLAS)
        torch.set_num_threads(1)
        blas = threadpool_limits(limits=1)
        try:
            energy = TorchEnergy.from_topology(peptide.topology, solvent=cfg.solvent).double()
            move = FlowSwapMove(
                flow, energy.energy, temps, plan,
                _masses_amu(create_system(peptide.topology, cfg.solvent)),
                n_eq_steps=cfg.steps(cfg.equilibration_ps, positive=False), dt_ps=cfg.dt_ps,
                skip_every=skip_every, velocities=velocities,
            )  # fmt: skip
            # one-off costs (energy kernel JIT, first flow call) are setup, not sampling
            move._propose(np.repeat(peptide.positions_nm[None], len(temps), 0), [(0, 1)])
            move.buf = _Buffer()
            c0, w0 = time.process_time(), time.perf_counter()
            res = simulate(peptide, out, cfg, progress=progress,
                           stop_after_chunks=stop_after_chunks, swap_move=move)  # fmt: skip
        finally:
            torch.set_num_threads(torch_threads)
            blas.restore_original_limits()
    meta["segments"].append({
        "cpu_s": time.process_time() - c0,
        "setup_cpu_s": c0 - setup0,
        "wall_s": time.perf_counter() - w0,
        "steps": res["steps_done"],
        "complete": res["complete"],
        "workers": cfg.workers,
    })  # fmt: skip
    write_json(sampler_path, meta)
    _annotate_metadata(out, meta)
    stats = sampler_statistics(out, observable_residue=observable_residue)
    write_json(out / STATS_FILE, stats)
    try:
        plot_sampler(out, out / "plots" / "sampler.png")
    except Exception as exc:  # noqa: BLE001 - a figure must not lose a finished run
        log.warning("sampler plot failed: %s", exc)
    return {**stats, "resumed": res["resumed"], "complete": res["complete"]}


def _annotate_metadata(out: Path, meta: dict) -> None:
    """Record the sampler in metadata.json (its swap_scheme describes the plain swap otherwise)."""
    from moltune.physics.ptdata import METADATA_FILE

    md = json.loads((out / METADATA_FILE).read_text())
    md["sampler"] = {k: meta.get(k) for k in ("format", "flow", "flow_name", "plan", "skip_every",
                                              "swap_scheme")}  # fmt: skip
    write_json(out / METADATA_FILE, md)


# ------------------------------------------------------------------------------------ statistics
def read_records(out_dir: str | Path) -> dict[str, np.ndarray]:
    """All production swap-attempt records of a flow run (empty arrays for a plain run)."""
    from moltune.physics.ptdata import STATE_FILE

    out = Path(out_dir)
    n_chunks = int(np.load(out / STATE_FILE)["n_chunks"]) if (out / STATE_FILE).is_file() else 0
    parts = []
    for p in sorted((out / "chunks").glob(f"{RECORD_PREFIX}*.npz")):
        if int(p.stem[len(RECORD_PREFIX) :]) < n_chunks:
            with np.load(p) as z:
                parts.append({k: z[k] for k in z.files})
    if not parts:
        empty = {k: np.zeros(0) for k in RECORD_KEYS}
        return {**empty, "flow_cpu_s": 0.0, "energy_cpu_s": 0.0, "move_cpu_s": 0.0,
                "flow_calls": 0}  # fmt: skip
    rec = {k: np.concatenate([p[k] for p in parts]) for k in RECORD_KEYS}
    for k in ("flow_cpu_s", "energy_cpu_s", "move_cpu_s", "flow_calls"):
        rec[k] = float(sum(float(p.get(k, 0.0)) for p in parts))
    return rec


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


def count_round_trips(history: np.ndarray) -> np.ndarray:
    """Round trips per walker from a walker history [E, K] (walker at temperature k, row e).

    A round trip is completed when a walker that went from the lowest temperature to the highest
    comes back to the lowest. Only the walker at the bottom at the first row starts 'from the
    bottom'; others must reach it first. Returns counts [n_walkers].
    """
    h = np.asarray(history)
    if h.size == 0:
        return np.zeros(0, int)
    n_w = int(h.max()) + 1
    last = np.full(n_w, -1)  # -1 none, 0 bottom, 1 top
    trips = np.zeros(n_w, int)
    for row in h:
        bottom, top = row[0], row[-1]
        if last[top] == 0:
            last[top] = 1
        if last[bottom] == 1:
            trips[bottom] += 1
        last[bottom] = 0
    return trips


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


def _batch_means_rate(series: np.ndarray, dt_ps: float, cpu_h: float) -> dict | None:
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
    meta = json.loads((out / SAMPLER_FILE).read_text()) if (out / SAMPLER_FILE).is_file() else {}
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
            est["batch_means"] = _batch_means_rate(s, dt_save, hours)
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


# ----------------------------------------------------------------------------------------- plot
def plot_sampler(out_dir: str | Path, path: str | Path) -> None:
    """Walker ladder (temperature of each walker against time) and acceptance per pair (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moltune.common.io import atomic_path
    from moltune.physics.ptdata import load_pt_data

    out = Path(out_dir)
    stats = json.loads((out / STATS_FILE).read_text())
    data = load_pt_data(out)
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    temps = data.temperatures_K
    if data.n_frames:
        idx = np.stack(data.replica_index)  # [K, F] walker at temperature k
        for w in range(len(temps)):
            k_of_w = np.argmax(idx == w, axis=0)
            a0.step(data.time_ps, temps[k_of_w], where="post", lw=0.8, label=f"walker {w}")
    a0.set_xlabel("time / ps")
    a0.set_ylabel("temperature / K")
    a0.set_title(f"walkers ({stats['round_trips']} round trips)")
    a0.legend(fontsize=7, loc="upper right")
    names = list(stats["pairs"])
    acc = [stats["pairs"][n]["acceptance"] for n in names]
    err = [stats["pairs"][n].get("acceptance_se", 0.0) for n in names]
    labels = [f"{stats['pairs'][n]['temperatures_K'][0]:g}-{stats['pairs'][n]['temperatures_K'][1]:g}"
              f"\n{stats['pairs'][n]['swap']}" for n in names]  # fmt: skip
    a1.bar(range(len(names)), acc, yerr=err, color="tab:blue")
    a1.set_xticks(range(len(names)), labels, fontsize=7)
    a1.set_ylim(0, 1)
    a1.set_ylabel("swap acceptance")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# ------------------------------------------------------------------------------ sampler comparison
def load_sampler_flow(spec: str | None) -> tuple[torch.nn.Module | None, dict | None]:
    """``None`` -> no flow; ``"identity"`` -> the identity control; else ``load_flow(spec)``."""
    if spec is None:
        return None, None
    if spec == "identity":
        from moltune.flow.models import IdentityFlow

        return IdentityFlow(), None
    from moltune.flow.checkpoint import load_flow

    return load_flow(spec)


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


# -------------------------------------------------------------------------- transfer evaluation
def transfer_table(
    flow_factory,
    data_dirs: dict[str, str | Path],
    pairs: list[tuple[int, int]] | None = None,
    n_pairs: int = 2000,
    n_boot: int = 200,
    seed: int = 0,
    progress: bool = False,
) -> list[dict]:
    """Naive vs flow swap acceptance for each pair of each peptide (issue 4, transfer), one table.

    ``flow_factory(topology, xyz_nm_by_temperature) -> flow`` gives the flow for a peptide (for a
    transferable model: the same weights on that peptide's atoms; zero-shot means it was not
    trained on it). ``data_dirs`` maps a peptide name to its PT folder (held-out frames).
    ``pairs`` are ladder index pairs (default: neighbours and the full skip 0 <-> K-1). Each
    acceptance comes from ``moltune.flow.evaluate.evaluate_transport`` (mean and block-bootstrap
    95% interval over ``n_pairs`` pairs of frames).
    """
    from moltune.flow.evaluate import evaluate_transport
    from moltune.physics.energy import TorchEnergy
    from moltune.physics.ptdata import load_pt_data

    rows = []
    for name, d in data_dirs.items():
        data = load_pt_data(d)
        temps = [float(t) for t in data.temperatures_K]
        k = len(temps)
        todo = pairs or [(i, i + 1) for i in range(k - 1)] + ([(0, k - 1)] if k > 2 else [])
        energy = TorchEnergy.from_topology(
            data.topology, solvent=data.metadata.get("solvent", "obc2")
        ).double()
        flow = flow_factory(data.topology, data.xyz_nm)
        for i, j in todo:
            metrics, _, _ = evaluate_transport(
                flow, energy.energy, data.xyz_nm[i], data.xyz_nm[j], temps[i], temps[j],
                n_pairs=n_pairs, n_boot=n_boot, n_roundtrip=8, seed=seed, progress=progress,
            )  # fmt: skip
            rows.append({
                "peptide": name,
                "pair": [i, j],
                "temperatures_K": [temps[i], temps[j]],
                "acceptance_naive": metrics["acceptance_naive"],
                "acceptance_flow": metrics["acceptance_flow"],
                "nonfinite_fraction": metrics["nonfinite_fraction"],
                "frames": [len(data.xyz_nm[i]), len(data.xyz_nm[j])],
            })  # fmt: skip
    return rows


def render_transfer(rows: list[dict], title: str = "Swap acceptance: naive vs flow") -> str:
    """Markdown table of :func:`transfer_table` rows (mean [95% interval])."""

    def fmt(a: dict) -> str:
        lo, hi = a.get("ci95", [math.nan, math.nan])
        return f"{a['mean']:.3f} [{lo:.3f}, {hi:.3f}]"

    lines = [f"# {title}", "", "| peptide | pair / K | naive | flow | non-finite |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        t = r["temperatures_K"]
        lines.append(f"| {r['peptide']} | {t[0]:g}-{t[1]:g} | {fmt(r['acceptance_naive'])} | "
                     f"{fmt(r['acceptance_flow'])} | {r['nonfinite_fraction']:.3g} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def run_flow_factory(spec: str):
    """``flow_factory`` for :func:`transfer_table` from ``--flow``: ``identity`` or a run whose
    flow is rebuilt for the peptide at hand (same config, its weights) and its coordinate
    standardisation refitted on that peptide's frames (torsions at origin 0 when the run was
    trained so, ``moltune.flow.multi_peptide.fit_representation``); weights shaped for another
    molecule (a per-atom layer of another size) raise an error naming them."""
    if spec == "identity":
        from moltune.flow.models import IdentityFlow

        return lambda topology, xyz: IdentityFlow()
    from moltune.common.config import from_dict
    from moltune.flow.checkpoint import resolve_checkpoint
    from moltune.flow.train import FlowConfig, build_flow

    ckpt = resolve_checkpoint(spec)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    meta = state["hyper_parameters"]["moltune"]
    weights = {
        k[len("flow.") :]: v for k, v in state["state_dict"].items() if k.startswith("flow.")
    }

    def factory(topology, xyz_by_temperature):
        flow = build_flow(from_dict(FlowConfig, meta["flow_config"], "flow"), topology)
        own = flow.state_dict()
        keep = {k: v for k, v in weights.items()
                if not k.startswith("representation.") and k in own}  # fmt: skip
        bad = [k for k, v in keep.items() if own[k].shape != v.shape]
        if bad:
            raise UserError(f"the flow in {ckpt} is not transferable to this molecule: weights "
                            f"{bad[:3]} have molecule-specific shapes")  # fmt: skip
        flow.load_state_dict(keep, strict=False)
        from moltune.flow.multi_peptide import fit_representation

        fit_representation(flow.representation, np.concatenate(list(xyz_by_temperature)),
                           meta.get("torsion_origin", "fitted"))  # fmt: skip
        return flow.eval()

    return factory
