"""Round trips counted once: FlowPT's online count equals the walker-history count
(``moltune.flow.pt_sampler.analysis``) and a plain per-walker count on the same run."""

from __future__ import annotations

import numpy as np
import torch

from moltune.flow.pt_sampler.analysis import count_round_trips
from moltune.flow.sampler import FlowPT, metropolis_propagator
from moltune.physics.replica_exchange import swap_pairs

TEMPS = (300.0, 450.0, 670.0, 1000.0)


def harmonic(x: torch.Tensor) -> torch.Tensor:
    return 20.0 * (x**2).sum(dim=1)  # kJ/mol, x in nm


def per_walker_trips(history: np.ndarray) -> int:
    """Bottom -> top -> bottom visits of each walker, counted from its first bottom visit."""
    trips = 0
    for w in range(history.shape[1]):
        from_bottom = at_top = False
        for row in history:
            if row[0] == w:
                trips += at_top
                from_bottom, at_top = True, False
            elif row[-1] == w and from_bottom:
                at_top = True
    return trips


def test_online_and_history_round_trips_agree():
    props = [metropolis_propagator(harmonic, t, 0.3, 2, seed=k) for k, t in enumerate(TEMPS)]
    pt = FlowPT(TEMPS, harmonic, props, seed=3)
    state = pt.init_state([torch.zeros(3, 1) for _ in TEMPS])
    rows = [state.walker.copy()]  # the starting arrangement: walker k at temperature k
    for _ in range(400):
        pt.step(state)
        rows.append(state.walker.copy())
    hist = np.stack(rows)  # [rounds + 1, K, chains]
    per_chain = [count_round_trips(hist[:, :, c]).sum() for c in range(hist.shape[2])]
    assert state.round_trips == sum(per_chain) > 10
    assert per_chain == [per_walker_trips(hist[:, :, c]) for c in range(hist.shape[2])]


def test_flow_pt_tries_the_pairs_of_plain_pt():
    flat = lambda x: torch.zeros(x.shape[0], dtype=x.dtype)
    pt = FlowPT(TEMPS, flat, [lambda x, u: (x, u)] * 4, skip_pairs=[(0, 3)], skip_every=3)
    for r in range(7):
        skips = [(0, 3)] if r % 3 == 0 else []
        assert pt.pairs_for_round(r) == swap_pairs(r, 4) + skips
    assert pt.pairs_for_round(0) == [(0, 1), (2, 3), (0, 3)] and pt.pairs_for_round(1) == [(1, 2)]
