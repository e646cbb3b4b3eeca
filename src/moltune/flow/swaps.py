"""Replica-exchange swap log-acceptance, naive and through a transport flow (float64).

A swap between replica i (temperature T_i, beta b_i = 1/kT_i in mol/kJ, configuration x) and
replica j (b_j, configuration y) proposes the new pair g(x, y) = (T^-1(y), T(x)): T^-1(y) goes to
temperature i and T(x) to temperature j. It is accepted with probability min(1, exp(D)), where

    D = -b_i U(T^-1(y)) - b_j U(T(x)) + b_i U(x) + b_j U(y) + log|det J_T(x)| + log|det J_T^-1(y)|

(energies U in kJ/mol). With T the identity this is the plain swap, D = (b_i - b_j)(U(x) - U(y));
the naive form is computed through the same expression with zero log-determinants, so a flow that
is exactly the identity reproduces the naive acceptance bit for bit.

D splits into a term of x alone and a term of y alone, D = -(w_F(x) + w_R(y)), where
w_F(x) = b_j U(T(x)) - b_i U(x) - log|det J_T(x)| is the (reduced, dimensionless) forward work and
w_R(y) = b_i U(T^-1(y)) - b_j U(y) - log|det J_T^-1(y)| the inverse work; metrics use this.

Non-finite inputs (an energy of inf/NaN, a NaN log-determinant) make the proposal invalid: its
log-acceptance is -inf (acceptance 0, the swap is rejected) and ``nonfinite_mask`` counts it. A
finite D is never clipped: acceptance is min(1, exp(D)) computed without overflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | float

__all__ = [
    "FlowSwapProposal",
    "acceptance_probability",
    "forward_work",
    "inverse_work",
    "log_acceptance_flow",
    "log_acceptance_naive",
    "nonfinite_mask",
    "propose_flow_swap",
]


def _f64(a: ArrayLike) -> np.ndarray:
    """Any scalar/array/tensor as a float64 numpy array (tensors detached, moved to CPU)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def nonfinite_mask(*terms: ArrayLike) -> np.ndarray:
    """True where any of the (broadcast) terms is NaN or +-inf."""
    arrays = np.broadcast_arrays(*[_f64(t) for t in terms])
    bad = np.zeros(arrays[0].shape, dtype=bool)
    for a in arrays:
        bad |= ~np.isfinite(a)
    return bad


def log_acceptance_flow(
    u_x: ArrayLike,
    u_y: ArrayLike,
    u_tx: ArrayLike,
    u_tinv_y: ArrayLike,
    logdet_forward: ArrayLike,
    logdet_inverse: ArrayLike,
    beta_i: ArrayLike,
    beta_j: ArrayLike,
) -> np.ndarray:
    """Log-acceptance D of the flow swap (x at beta_i, y at beta_j) -> (T^-1(y), T(x)).

    Energies in kJ/mol, betas in mol/kJ, log-determinants of T at x and of T^-1 at y. Returns a
    float64 array; entries with any non-finite term are -inf (rejected).
    """
    u_x, u_y, u_tx, u_tinv_y = _f64(u_x), _f64(u_y), _f64(u_tx), _f64(u_tinv_y)
    ld_f, ld_i, b_i, b_j = _f64(logdet_forward), _f64(logdet_inverse), _f64(beta_i), _f64(beta_j)
    bad = nonfinite_mask(u_x, u_y, u_tx, u_tinv_y, ld_f, ld_i, b_i, b_j)
    with np.errstate(invalid="ignore", over="ignore"):
        d = -b_i * u_tinv_y - b_j * u_tx + b_i * u_x + b_j * u_y + ld_f + ld_i
    d = np.where(bad | ~np.isfinite(d), -np.inf, d)
    return d


def log_acceptance_naive(
    u_x: ArrayLike, u_y: ArrayLike, beta_i: ArrayLike, beta_j: ArrayLike
) -> np.ndarray:
    """Log-acceptance of the plain swap, D = (b_i - b_j)(U(x) - U(y)), via the flow formula.

    Computed as the flow expression with T = identity (U(T(x)) = U(x), zero log-determinants), so
    a flow that is exactly the identity gives bit-identical acceptances.
    """
    zero = np.zeros(np.broadcast_shapes(np.shape(_f64(u_x)), np.shape(_f64(u_y))))
    return log_acceptance_flow(u_x, u_y, u_x, u_y, zero, zero, beta_i, beta_j)


def acceptance_probability(log_alpha: ArrayLike) -> np.ndarray:
    """min(1, exp(D)) in float64; NaN or -inf D gives 0 (rejected), +inf gives 1."""
    d = _f64(log_alpha)
    d = np.where(np.isnan(d), -np.inf, d)
    return np.exp(np.minimum(d, 0.0))


def forward_work(
    u_x: ArrayLike, u_tx: ArrayLike, logdet_forward: ArrayLike, beta_i: ArrayLike, beta_j: ArrayLike
) -> np.ndarray:
    """Reduced forward work w_F(x) = b_j U(T(x)) - b_i U(x) - log|det J_T(x)| (dimensionless).

    Non-finite terms give +inf (the proposal has zero importance weight).
    """
    u_x, u_tx, ld, b_i, b_j = (_f64(a) for a in (u_x, u_tx, logdet_forward, beta_i, beta_j))
    bad = nonfinite_mask(u_x, u_tx, ld, b_i, b_j)
    with np.errstate(invalid="ignore", over="ignore"):
        w = b_j * u_tx - b_i * u_x - ld
    return np.where(bad | ~np.isfinite(w), np.inf, w)


def inverse_work(
    u_y: ArrayLike,
    u_tinv_y: ArrayLike,
    logdet_inverse: ArrayLike,
    beta_i: ArrayLike,
    beta_j: ArrayLike,
) -> np.ndarray:
    """Reduced inverse work w_R(y) = b_i U(T^-1(y)) - b_j U(y) - log|det J_T^-1(y)|.

    Non-finite terms give +inf.
    """
    u_y, u_ti, ld, b_i, b_j = (_f64(a) for a in (u_y, u_tinv_y, logdet_inverse, beta_i, beta_j))
    bad = nonfinite_mask(u_y, u_ti, ld, b_i, b_j)
    with np.errstate(invalid="ignore", over="ignore"):
        w = b_i * u_ti - b_j * u_y - ld
    return np.where(bad | ~np.isfinite(w), np.inf, w)


EnergyFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class FlowSwapProposal:
    """One batch of flow-swap proposals and everything needed to accept or reject them.

    ``x_to_i`` = T^-1(y) (the candidate for temperature i), ``y_to_j`` = T(x) (for temperature j);
    energies in kJ/mol (float64 numpy), log-determinants of each direction, ``log_alpha`` = D and
    ``nonfinite`` (bool, invalid proposals, always rejected).
    """

    x_to_i: torch.Tensor
    y_to_j: torch.Tensor
    u_x: np.ndarray
    u_y: np.ndarray
    u_tx: np.ndarray
    u_tinv_y: np.ndarray
    logdet_forward: np.ndarray
    logdet_inverse: np.ndarray
    log_alpha: np.ndarray
    nonfinite: np.ndarray

    @property
    def acceptance(self) -> np.ndarray:
        return acceptance_probability(self.log_alpha)


def _energy_f64(energy: EnergyFn, x: torch.Tensor) -> np.ndarray:
    """Energies (kJ/mol) of a batch as float64; rows with non-finite coordinates give NaN.

    Energy functions may raise on NaN input (by contract), so such rows are not passed on.
    """
    finite = torch.isfinite(x).flatten(1).all(dim=1)
    out = np.full(x.shape[0], np.nan)
    if bool(finite.any()):
        idx = torch.nonzero(finite).flatten()
        u = energy(x[idx])
        out[idx.cpu().numpy()] = _f64(u)
    return out


@torch.no_grad()
def propose_flow_swap(
    flow: torch.nn.Module,
    energy: EnergyFn,
    x: torch.Tensor,
    y: torch.Tensor,
    t_i_K: float,
    t_j_K: float,
    beta_i: float,
    beta_j: float,
    u_x: ArrayLike | None = None,
    u_y: ArrayLike | None = None,
) -> FlowSwapProposal:
    """Push x [B,N,3] (nm, at T_i) forward and y [B,N,3] (at T_j) back through ``flow``; score.

    ``energy`` maps [B,N,3] nm to U [B] kJ/mol. Known energies of x and y may be passed to
    save two energy calls. The flow is called as ``flow(x, t_i, t_j)`` and
    ``flow.inverse(y, t_i, t_j)`` (transport from T_i to T_j and back).
    """
    tx, ld_f = flow(x, t_i_K, t_j_K)
    tinv_y, ld_i = flow.inverse(y, t_i_K, t_j_K)
    # one energy call for every configuration still unscored (small batches are overhead-bound)
    todo = [tx, tinv_y] + [c for c, u in ((x, u_x), (y, u_y)) if u is None]
    u_all = np.split(_energy_f64(energy, torch.cat(todo)), len(todo))
    u_tx, u_tinv_y = u_all[0], u_all[1]
    u_x = u_all.pop(2) if u_x is None else _f64(u_x)
    u_y = u_all.pop(2) if u_y is None else _f64(u_y)
    ld_f, ld_i = _f64(ld_f), _f64(ld_i)
    bad = nonfinite_mask(u_x, u_y, u_tx, u_tinv_y, ld_f, ld_i)
    log_alpha = log_acceptance_flow(u_x, u_y, u_tx, u_tinv_y, ld_f, ld_i, beta_i, beta_j)
    return FlowSwapProposal(
        x_to_i=tinv_y,
        y_to_j=tx,
        u_x=u_x,
        u_y=u_y,
        u_tx=u_tx,
        u_tinv_y=u_tinv_y,
        logdet_forward=ld_f,
        logdet_inverse=ld_i,
        log_alpha=log_alpha,
        nonfinite=bad,
    )
