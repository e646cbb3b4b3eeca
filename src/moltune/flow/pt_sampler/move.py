"""The swap move of flow-PT on OpenMM replicas: one call per swap event of ``replica_exchange``.

Replicas are propagated by ``moltune.physics.replica_exchange`` (Langevin, 1 fs, 1/ps). At each
swap event the neighbour pairs of that event's parity are tried; a pair (i < j) the flow serves
(``plan.plan_swaps``) proposes g(x, y) = (T^-1(y), T(x)) and is accepted with min(1, exp(D)), D
from ``moltune.flow.swaps.propose_flow_swap`` with all four energies from ``TorchEnergy``
(float64) so that D is exact for one energy function (it equals OpenMM's to ~1e-4 kJ/mol).
After an accepted flow swap each replica continues from its new coordinates with velocities
drawn from the integrator's own stationary p(v | x) in the local harmonic approximation
(``velocities="harmonic"``, the default, :func:`moltune.physics.integrator.langevin_middle_velocities`),
from plain Maxwell-Boltzmann (``"redraw"``) or kept (``"keep"``). All three leave p(x) x MB(v)
invariant for exact dynamics, but OpenMM's ``LangevinMiddleIntegrator`` stores velocities
correlated with positions, and at 1 fs (no constraints) the stiff bonds and angles notice:
measured on AA, "redraw" leaves bond + angle energy about 1 kT above plain PT at every
temperature (gone at 0.5 fs) and "keep" is far worse (+8.5 kJ/mol at 300 K, +45 at 1000 K).
"harmonic" is exact for harmonic modes, which the stiff ones nearly are: with it, 1 fs flow-PT's
bond energies match plain PT's at every temperature (``benchmarks/pt_energy_terms.py``). Pairs
the flow does not serve use the plain swap (velocities rescaled). Optional skip pairs (i, j)
with j > i + 1 are tried every ``skip_every`` events after the neighbour pairs. One uniform
number per tried pair comes from the run's swap RNG, so a run is reproducible and resumes
exactly; with no flow the run *is* ``replica_exchange.simulate``.

Hook. :class:`FlowSwapMove` is passed to ``replica_exchange.simulate(..., swap_move=move)``
(the ``replica_exchange.SwapMove`` signature); its ``flush(out, chunk_index)`` writes the
chunk's attempt records (``records``) just before the chunk and the state they belong to.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from moltune.common.errors import InvalidInputError
from moltune.flow.pt_sampler.plan import KIND_FLOW, KIND_PLAIN, KIND_SKIP, check_skip_every
from moltune.flow.pt_sampler.records import SwapRecords

#: Velocities after an accepted flow swap (see the module doc); the first is the default.
VELOCITY_MODES = ("harmonic", "redraw", "keep")

__all__ = ["VELOCITY_MODES", "FlowSwapMove"]


class FlowSwapMove:
    """The swap move of one flow-PT run (called by ``replica_exchange``'s loop, see module doc).

    ``flow`` maps T_i -> T_j as ``flow(x, t_i, t_j)`` / ``flow.inverse(y, t_i, t_j)``; ``energy``
    maps [B, N, 3] nm (float64) to U [B] kJ/mol (differentiable for ``velocities="harmonic"``);
    ``masses_amu`` [N] for new velocities; ``plan`` from ``plan.plan_swaps``; ``n_eq_steps`` and
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
        self.skip_every = check_skip_every(skip_every)
        self.n_eq, self.dt_ps = int(n_eq_steps), float(dt_ps)
        # kJ/mol / amu = (nm/ps)^2: Maxwell-Boltzmann standard deviation per atom at each T
        self.masses = np.asarray(masses_amu, dtype=np.float64)
        self.kts = [KB_KJMOL * t for t in self.temps]
        self.v_sigma = [np.sqrt(kt / self.masses)[:, None] for kt in self.kts]
        self.buf = SwapRecords()

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
                self.buf.add(event, t_ps, i, j, kind, d, ok, bad)
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
                self.buf.add(event, t_ps, i, j, KIND_SKIP, d, ok, bool(sp.nonfinite[0]))
        for s in sorted(changed) if self.velocities != "keep" else ():
            vel[s] = self._new_velocities(s, pos[s], state.rng)
        updates = {s: (pos[s], vel[s]) for s in sorted(changed | plain_changed)}
        if updates:
            replicas.set_states(updates)
        return result

    def flush(self, out: Path, chunk_index: int) -> None:
        """Write this chunk's attempt records (atomic); called before the chunk and state."""
        self.buf.save(out, chunk_index)
        self.buf = SwapRecords()


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
