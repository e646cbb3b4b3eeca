"""Parallel tempering whose swaps move configurations through transport flows (generic core).

K temperatures, each holding a batch of B independent chains (B = 1 for a molecular simulation;
B in the thousands for exactness tests on toy systems). One *round* propagates every temperature
with its own callable (MD, Metropolis, ...), then attempts swaps between the neighbouring pairs of
one parity (0-1, 2-3, ... on even rounds; 1-2, 3-4, ... on odd rounds) and, every
``skip_every`` rounds, the listed skip pairs (for example 0 <-> K-1).

A swap of x (temperature i) and y (temperature j) proposes (T^-1(y), T(x)) and accepts it with
min(1, exp(D)) (``moltune.flow.swaps``). The proposal is an involution and D carries both
log-determinants, so each swap leaves the product of the Boltzmann distributions invariant; with
no flow for a pair the swap is the plain exchange. Invalid proposals (non-finite coordinates,
energies or log-determinants) are rejected and counted.

An accepted flow swap puts a *new* configuration at each temperature: a propagator that carries
momenta must redraw them (``on_accept`` is called with the temperature index and accepted mask).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from moltune.flow.pt_sampler.analysis import advance_round_trips
from moltune.flow.swaps import (
    acceptance_probability,
    log_acceptance_naive,
    nonfinite_mask,
    propose_flow_swap,
)
from moltune.physics.replica_exchange import swap_pairs

EnergyFn = Callable[[torch.Tensor], torch.Tensor]
# propagate(x [B, ...], u [B] float64 numpy) -> (x', u'): one round of sampling at its temperature
Propagator = Callable[[torch.Tensor, np.ndarray], tuple[torch.Tensor, np.ndarray]]

__all__ = ["FlowPT", "PTState", "SwapStats", "metropolis_propagator"]


@dataclass
class SwapStats:
    """Per swap pair: attempts, accepted swaps, summed acceptance probability, invalid proposals."""

    attempts: int = 0
    accepted: int = 0
    acceptance_sum: float = 0.0
    nonfinite: int = 0

    @property
    def acceptance(self) -> float:
        """Mean Metropolis acceptance probability (lower variance than the accepted fraction)."""
        return self.acceptance_sum / self.attempts if self.attempts else float("nan")


@dataclass
class PTState:
    """Configurations ``x[k]`` [B, ...] and energies ``u[k]`` [B] (kJ/mol) at temperature k.

    ``walker[k, b]`` names the walker (replica) at temperature k in chain b; ``last_end[w, b]``
    tracks walker w for round trips (-1 not yet at the bottom, 0 left the bottom, 1 reached the
    top since).
    """

    x: list[torch.Tensor]
    u: list[np.ndarray]
    walker: np.ndarray
    last_end: np.ndarray
    round: int = 0
    round_trips: int = 0
    stats: dict[tuple[int, int], SwapStats] = field(default_factory=dict)


class FlowPT:
    """Flow-enhanced (or, without flows, plain) parallel tempering over a temperature ladder.

    ``flows`` is None (plain swaps everywhere), one conditional flow used for every pair (called
    with the pair's temperatures), or a mapping {(i, j): flow} with i < j (pairs not in it use the
    plain swap). ``propagators[k]`` samples temperature k. ``energy`` maps configurations to
    U [B] in kJ/mol and must be the energy the propagators sample.
    """

    def __init__(
        self,
        temperatures_K: Sequence[float],
        energy: EnergyFn,
        propagators: Sequence[Propagator],
        flows: torch.nn.Module | Mapping[tuple[int, int], torch.nn.Module] | None = None,
        skip_pairs: Sequence[tuple[int, int]] = (),
        skip_every: int = 1,
        seed: int = 0,
        on_accept: Callable[[int, np.ndarray], None] | None = None,
    ):
        from moltune.physics.units import beta

        self.temperatures_K = [float(t) for t in temperatures_K]
        if any(b <= a for a, b in zip(self.temperatures_K, self.temperatures_K[1:])):
            raise ValueError("temperatures must be strictly increasing")
        if len(propagators) != len(self.temperatures_K):
            raise ValueError("need one propagator per temperature")
        self.betas = [float(beta(t)) for t in self.temperatures_K]
        self.energy = energy
        self.propagators = list(propagators)
        self.flows = flows
        for i, j in skip_pairs:
            if not 0 <= i < j < len(self.temperatures_K):
                raise ValueError(f"skip pair {(i, j)} is not (i, j) with 0 <= i < j < K")
        self.skip_pairs = [tuple(p) for p in skip_pairs]
        self.skip_every = max(1, int(skip_every))
        self.rng = np.random.default_rng(seed)
        self.on_accept = on_accept

    @property
    def n_temperatures(self) -> int:
        return len(self.temperatures_K)

    def flow_for(self, i: int, j: int) -> torch.nn.Module | None:
        if self.flows is None:
            return None
        if isinstance(self.flows, torch.nn.Module):
            return self.flows
        return self.flows.get((i, j))

    # ------------------------------------------------------------------ state
    def init_state(self, x0: Sequence[torch.Tensor]) -> PTState:
        """State from one batch of starting configurations per temperature."""
        if len(x0) != self.n_temperatures:
            raise ValueError("need starting configurations for every temperature")
        x = [torch.as_tensor(v, dtype=torch.float64).clone() for v in x0]
        u = [self._energy(v) for v in x]
        k, b = self.n_temperatures, x[0].shape[0]
        walker = np.tile(np.arange(k)[:, None], (1, b))
        last_end = np.full((k, b), -1, dtype=np.int8)
        last_end[0] = 0  # walker 0 starts at the bottom
        return PTState(x=x, u=u, walker=walker, last_end=last_end)

    @torch.no_grad()
    def _energy(self, x: torch.Tensor) -> np.ndarray:
        return self.energy(x).detach().to("cpu", torch.float64).numpy().copy()

    # ------------------------------------------------------------------ moves
    def pairs_for_round(self, r: int) -> list[tuple[int, int]]:
        """Neighbour pairs of the round's parity, then skip pairs when due."""
        pairs = swap_pairs(r, self.n_temperatures)
        if self.skip_pairs and r % self.skip_every == 0:
            pairs += self.skip_pairs
        return pairs

    @torch.no_grad()
    def swap(self, state: PTState, i: int, j: int) -> np.ndarray:
        """Attempt the swap between temperatures i < j in every chain; returns the accepted mask."""
        flow = self.flow_for(i, j)
        xi, xj, ui, uj = state.x[i], state.x[j], state.u[i], state.u[j]
        if flow is None:
            log_alpha = log_acceptance_naive(ui, uj, self.betas[i], self.betas[j])
            bad = nonfinite_mask(ui, uj)
            new_i, new_j, new_ui, new_uj = xj, xi, uj, ui
        else:
            prop = propose_flow_swap(
                flow, self.energy, xi, xj, self.temperatures_K[i], self.temperatures_K[j],
                self.betas[i], self.betas[j], u_x=ui, u_y=uj,
            )  # fmt: skip
            log_alpha, bad = prop.log_alpha, prop.nonfinite
            new_i, new_j = prop.x_to_i.to(xi.dtype), prop.y_to_j.to(xj.dtype)
            new_ui, new_uj = prop.u_tinv_y, prop.u_tx
        alpha = acceptance_probability(log_alpha)
        acc = self.rng.random(alpha.shape[0]) < alpha
        if acc.any():
            m = torch.as_tensor(acc)
            shape = (-1,) + (1,) * (xi.dim() - 1)
            state.x[i] = torch.where(m.view(shape), new_i, xi)
            state.x[j] = torch.where(m.view(shape), new_j, xj)
            state.u[i] = np.where(acc, new_ui, ui)
            state.u[j] = np.where(acc, new_uj, uj)
            wi, wj = state.walker[i].copy(), state.walker[j].copy()
            state.walker[i] = np.where(acc, wj, wi)
            state.walker[j] = np.where(acc, wi, wj)
            if self.on_accept is not None and flow is not None:
                self.on_accept(i, acc)
                self.on_accept(j, acc)
        st = state.stats.setdefault((i, j), SwapStats())
        st.attempts += int(alpha.shape[0])
        st.accepted += int(acc.sum())
        st.acceptance_sum += float(alpha.sum())
        st.nonfinite += int(bad.sum())
        return acc

    def _count_round_trips(self, state: PTState) -> None:
        """Add the bottom -> top -> bottom trips completed this round (``advance_round_trips``)."""
        state.round_trips += int(advance_round_trips(state.last_end, state.walker[None]).sum())

    def step(self, state: PTState) -> PTState:
        """One round: propagate every temperature, then the round's swaps."""
        for k, prop in enumerate(self.propagators):
            state.x[k], state.u[k] = prop(state.x[k], state.u[k])
        for i, j in self.pairs_for_round(state.round):
            self.swap(state, i, j)
        self._count_round_trips(state)
        state.round += 1
        return state

    def run(
        self,
        state: PTState,
        n_rounds: int,
        record_every: int = 0,
        progress: bool = False,
    ) -> list[list[np.ndarray]]:
        """Run ``n_rounds`` rounds; every ``record_every`` rounds (0: never) store each
        temperature's configurations. Returns records[k] = list of [B, ...] arrays."""
        from tqdm.auto import tqdm

        records: list[list[np.ndarray]] = [[] for _ in range(self.n_temperatures)]
        for r in tqdm(range(n_rounds), disable=not progress, desc="PT rounds", leave=False):
            self.step(state)
            if record_every and (r + 1) % record_every == 0:
                for k in range(self.n_temperatures):
                    records[k].append(state.x[k].numpy().copy())
        return records


def metropolis_propagator(
    energy: EnergyFn, temperature_K: float, step_size: float, n_steps: int, seed: int = 0
) -> Propagator:
    """Random-walk Metropolis at one temperature (Gaussian steps of ``step_size``), ``n_steps``
    per call: an exact propagator for toy systems."""
    from moltune.physics.units import beta

    b = float(beta(temperature_K))
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    @torch.no_grad()
    def propagate(x: torch.Tensor, u: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        shape = (-1,) + (1,) * (x.dim() - 1)
        for _ in range(n_steps):
            trial = x + step_size * torch.randn(x.shape, generator=gen, dtype=x.dtype)
            u_trial = energy(trial).detach().to("cpu", torch.float64).numpy()
            with np.errstate(invalid="ignore", over="ignore"):
                log_a = -b * (u_trial - u)
            acc = np.log(rng.random(u.shape[0])) < np.where(np.isfinite(log_a), log_a, -np.inf)
            x = torch.where(torch.as_tensor(acc).view(shape), trial, x)
            u = np.where(acc, u_trial, u)
        return x, u

    return propagate
