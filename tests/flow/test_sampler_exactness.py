"""Flow-PT leaves every temperature's Boltzmann distribution invariant (issue 4, exactness).

System: a 2-D tilted double well U(x1, x2) = h (x1^2 - 1)^2 + c x1 + k x2^2 / 2 (kJ/mol) at 300,
600 and 1200 K, whose marginals are known by 1-D numerical integration. For each pair (the two
neighbour pairs and the 300 <-> 1200 K skip) a small monotone non-linear flow is trained with the
same bidirectional energy loss as the molecular flows, on exact samples. Thousands of independent
PT chains start far from equilibrium (all in the left well); after the run, each temperature's
final configurations are compared with the exact marginals (chi-square on x1 bins, KS on x2).
A flow whose log-determinant is dropped from D must fail the same test: the test has power.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from moltune.flow.sampler import FlowPT, metropolis_propagator
from moltune.physics.units import beta

TEMPS = (300.0, 600.0, 1200.0)
H = 5.0 / beta(300.0)  # barrier 5 kT at 300 K
C = 1.0  # tilt, kJ/mol per unit x1
K2 = 20.0  # kJ/mol per unit^2 along x2
GRID = np.linspace(-3.0, 3.0, 24001)


def energy(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., 0], x[..., 1]
    return H * (x1 * x1 - 1) ** 2 + C * x1 + 0.5 * K2 * x2 * x2


def _x1_density(temp: float) -> np.ndarray:
    """Normalised marginal density of x1 on GRID (trapezoidal)."""
    u = H * (GRID**2 - 1) ** 2 + C * GRID
    p = np.exp(-beta(temp) * (u - u.min()))
    return p / np.trapezoid(p, GRID)


def exact_samples(temp: float, n: int, rng: np.random.Generator) -> torch.Tensor:
    """Independent exact samples [n, 2]: x1 by inverse CDF on the grid, x2 Gaussian."""
    p = _x1_density(temp)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(GRID))])
    x1 = np.interp(rng.random(n) * cdf[-1], cdf, GRID)
    x2 = rng.normal(0.0, math.sqrt(1 / (beta(temp) * K2)), n)
    return torch.as_tensor(np.stack([x1, x2], 1))


def x1_bin_probabilities(temp: float, edges: np.ndarray) -> np.ndarray:
    p = _x1_density(temp)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(GRID))])
    return np.diff(np.interp(edges, GRID, cdf, left=0.0, right=1.0))


class MonotoneFlow(torch.nn.Module):
    """T(x1, x2) = (m1 + e^s1 (x1 + sum_k a_k tanh(b_k (x1 - c_k))), m2 + e^s2 x2), a_k, b_k > 0.

    Strictly increasing in x1, so invertible; the inverse is found by bisection (float64) and a
    Newton step carries gradients for training. log|det| varies with x1.
    """

    def __init__(self, n_bumps: int = 4):
        super().__init__()
        self.s = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.m = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.a = torch.nn.Parameter(torch.full((n_bumps,), -4.0, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.zeros(n_bumps, dtype=torch.float64))
        self.c = torch.nn.Parameter(torch.linspace(-1.5, 1.5, n_bumps, dtype=torch.float64))

    def _g(self, x1, derivative: bool = True):
        a, b = torch.nn.functional.softplus(self.a), torch.nn.functional.softplus(self.b)
        z = b * (x1[:, None] - self.c)
        g = x1 + (a * torch.tanh(z)).sum(-1)
        if not derivative:
            return g, None
        dg = 1 + (a * b / torch.cosh(z) ** 2).sum(-1)
        return g, dg

    def forward(self, x, t_s=None, t_t=None):
        g, dg = self._g(x[:, 0])
        y1 = self.m[0] + torch.exp(self.s[0]) * g
        y2 = self.m[1] + torch.exp(self.s[1]) * x[:, 1]
        return torch.stack([y1, y2], 1), self.s.sum() + torch.log(dg)

    def inverse(self, y, t_s=None, t_t=None):
        target = (y[:, 0] - self.m[0]) * torch.exp(-self.s[0])
        with torch.no_grad():
            spread = torch.nn.functional.softplus(self.a).sum()
            lo, hi = target - spread - 1e-9, target + spread + 1e-9
            for _ in range(56):
                mid = 0.5 * (lo + hi)
                below = self._g(mid, derivative=False)[0] < target
                lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
            x1 = 0.5 * (lo + hi)
        g, dg = self._g(x1)
        x1 = x1 - (g - target) / dg  # value unchanged to round-off; gives implicit gradients
        x2 = (y[:, 1] - self.m[1]) * torch.exp(-self.s[1])
        return torch.stack([x1, x2], 1), -self.s.sum() - torch.log(self._g(x1)[1])


class DropLogdet(torch.nn.Module):
    """The same map with its log-determinants replaced by zero (a wrong swap, for power)."""

    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, x, t_s=None, t_t=None):
        y, ld = self.flow(x)
        return y, torch.zeros_like(ld)

    def inverse(self, y, t_s=None, t_t=None):
        x, ld = self.flow.inverse(y)
        return x, torch.zeros_like(ld)


def train_flow(t_s: float, t_t: float, steps: int = 150, seed: int = 0) -> MonotoneFlow:
    """Bidirectional energy loss E_x[b_t U(T x) - logdet] + E_y[b_s U(T^-1 y) - logdet^-1]."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    flow = MonotoneFlow()
    opt = torch.optim.Adam(flow.parameters(), lr=0.05)
    b_s, b_t = beta(t_s), beta(t_t)
    for _ in range(steps):
        x, y = exact_samples(t_s, 512, rng), exact_samples(t_t, 512, rng)
        tx, ld_f = flow(x)
        ty, ld_i = flow.inverse(y)
        loss = (b_t * energy(tx) - ld_f).mean() + (b_s * energy(ty) - ld_i).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return flow.eval()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Thousands of tiny tensor ops: one intra-op thread avoids oversubscription stalls."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def flows(_one_thread):
    return {(0, 1): train_flow(300, 600), (1, 2): train_flow(600, 1200),
            (0, 2): train_flow(300, 1200)}  # fmt: skip


def run_pt(
    flows, n_chains: int = 2000, n_rounds: int = 100, seed: int = 0
) -> tuple[FlowPT, object]:
    props = [
        metropolis_propagator(energy, t, step_size=0.25 * math.sqrt(t / 300), n_steps=4,
                              seed=seed + 10 * k)
        for k, t in enumerate(TEMPS)
    ]  # fmt: skip
    pt = FlowPT(TEMPS, energy, props, flows=flows, skip_pairs=[(0, 2)], seed=seed)
    start = torch.zeros(n_chains, 2, dtype=torch.float64)
    start[:, 0] = -1.0  # every chain starts in the left well, far from equilibrium
    state = pt.init_state([start.clone() for _ in TEMPS])
    pt.run(state, n_rounds)
    return pt, state


def distribution_pvalues(state) -> list[tuple[float, float]]:
    """(chi-square p of x1 bins, KS p of x2) per temperature, final configurations."""
    out = []
    edges = np.concatenate([[-np.inf], np.linspace(-1.8, 1.8, 25), [np.inf]])
    for k, t in enumerate(TEMPS):
        x = state.x[k].numpy()
        obs = np.histogram(x[:, 0], bins=edges)[0]
        exp = x1_bin_probabilities(t, edges) * len(x)
        keep = exp >= 5
        chi2 = float(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep]))
        p_chi = float(stats.chi2.sf(chi2, keep.sum() - 1))
        p_ks = float(stats.kstest(x[:, 1], "norm", args=(0, math.sqrt(1 / (beta(t) * K2)))).pvalue)
        out.append((p_chi, p_ks))
    return out


def test_trained_flow_is_exactly_invertible_and_better_than_identity(flows):
    rng = np.random.default_rng(5)
    x = exact_samples(300, 2000, rng)
    f = flows[(0, 1)]
    with torch.no_grad():
        y, ld = f(x)
        xb, ld_inv = f.inverse(y)
    assert torch.allclose(xb, x, atol=1e-10)
    torch.testing.assert_close(ld_inv, -ld, atol=1e-10, rtol=0)
    assert float(ld.std()) > 0.05  # a genuinely non-linear map: the Jacobian varies


def test_flow_pt_samples_exact_distributions(flows):
    _, state = run_pt(flows)
    pvals = distribution_pvalues(state)
    for (p_chi, p_ks), t in zip(pvals, TEMPS):
        assert p_chi > 1e-3 and p_ks > 1e-3, (t, pvals)
    # the population of the right well at 300 K, against the exact value (binomial error)
    exact = x1_bin_probabilities(300.0, np.array([0.0, np.inf]))[0]
    right = float((state.x[0][:, 0] > 0).double().mean())
    assert abs(right - exact) < 4 * math.sqrt(exact * (1 - exact) / state.x[0].shape[0])
    # the flows do their job: swaps accepted far more often than plain exchange
    _, plain = run_pt(None, n_chains=500, n_rounds=40)
    for pair in ((0, 1), (1, 2), (0, 2)):
        assert state.stats[pair].acceptance > plain.stats[pair].acceptance + 0.1, pair
        assert state.stats[pair].nonfinite == 0
    assert state.round_trips > 0


def test_plain_pt_also_exact(flows):
    _, state = run_pt(None, seed=3)
    for (p_chi, p_ks), t in zip(distribution_pvalues(state), TEMPS):
        assert p_chi > 1e-3 and p_ks > 1e-3, t


def test_dropping_the_log_determinant_is_detected(flows):
    wrong = {pair: DropLogdet(f) for pair, f in flows.items()}
    _, state = run_pt(wrong)
    worst = min(p for pv in distribution_pvalues(state) for p in pv)
    assert worst < 1e-6


def test_round_trips_walkers_and_stats_on_a_flat_energy():
    """U = 0: every plain swap is accepted, so the walker permutation is known round by round."""
    flat = lambda x: torch.zeros(x.shape[0], dtype=x.dtype)
    stay = lambda x, u: (x, u)
    pt = FlowPT(TEMPS, flat, [stay] * 3)
    state = pt.init_state([torch.full((2, 1), float(k)) for k in range(3)])
    pt.run(state, 6)
    # rounds: (0,1) (1,2) (0,1) (1,2) (0,1) (1,2) -> walker 0 goes bottom -> top (round 1) ->
    # bottom (round 4): exactly one round trip per chain; the permutation is back to the start
    assert state.round_trips == 2
    np.testing.assert_array_equal(state.walker, [[0, 0], [1, 1], [2, 2]])
    for k in range(3):  # configurations travel with their walkers
        assert torch.equal(state.x[k], torch.full((2, 1), float(k)))
    assert state.stats[(0, 1)].attempts == 6 and state.stats[(0, 1)].accepted == 6
    assert state.stats[(1, 2)].acceptance == 1.0
