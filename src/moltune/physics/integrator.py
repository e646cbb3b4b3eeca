"""Velocities for new coordinates that match what OpenMM's ``LangevinMiddleIntegrator`` expects.

A move that replaces a replica's coordinates (a flow swap) must hand the integrator velocities
too. A fresh Maxwell-Boltzmann draw is right for exact dynamics but not for the integrator: per
step it kicks v by dt F/m, drifts half, applies friction and noise, drifts half, and the
velocity it stores is correlated with the position. For a harmonic mode of angular frequency
w (no constraints) its stationary state is exactly

    x ~ N(0, kT / (m w^2)),   v | x = (dt/2) grad U(x) / m + sqrt(kT/m (1 - (w dt / 2)^2)) xi,

(derived from the step's linear map; a test checks it against OpenMM). An independent draw has
the right marginal but none of the correlation, and too wide a spread given x, which heats
stiff modes: a C-H stretch at 1 fs (w dt ~ 0.6) by about 9% of kT/2 on average over the next
0.1 ps; about 1 kT on alanine-alanine's bonds and angles in total (measured).
:func:`langevin_middle_velocities` draws v from that
conditional for the local harmonic approximation of U at x (mass-weighted Hessian by central
differences of the gradient); soft and negative-curvature modes get the plain Maxwell-Boltzmann
width. Units: nm, ps, amu, kJ/mol (kJ/mol / amu = nm^2/ps^2).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Central-difference step (nm) for the Hessian from gradients; float64 gradients are exact to
#: ~1e-12 relative, so the truncation error (~eps^2 U''') and round-off (~1e-12/eps) both stay
#: below 1e-6 of the curvatures that matter.
HESSIAN_STEP_NM = 1e-5


def mass_weighted_hessian(
    grad_fn: Callable[[np.ndarray], np.ndarray], x_nm: np.ndarray, masses_amu: np.ndarray,
    step_nm: float = HESSIAN_STEP_NM,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(M^-1/2 H M^-1/2 [3N, 3N] in 1/ps^2, grad U(x) [3N] in kJ/mol/nm) at x [N, 3] nm.

    ``grad_fn`` maps [B, N, 3] nm to dU/dx [B, N, 3] kJ/mol/nm (one batched call here: 6N + 1
    configurations).
    """
    x = np.asarray(x_nm, dtype=np.float64)
    n = x.size
    shifts = np.eye(n) * step_nm
    flat = x.reshape(1, n)
    batch = np.concatenate([flat, flat + shifts, flat - shifts]).reshape(2 * n + 1, *x.shape)
    g = np.asarray(grad_fn(batch), dtype=np.float64).reshape(2 * n + 1, n)
    hess = (g[1 : n + 1] - g[n + 1 :]) / (2.0 * step_nm)
    hess = 0.5 * (hess + hess.T)
    inv_sqrt_m = 1.0 / np.sqrt(np.repeat(np.asarray(masses_amu, dtype=np.float64), 3))
    return hess * inv_sqrt_m[:, None] * inv_sqrt_m[None, :], g[0]


def langevin_middle_velocities(
    grad_fn: Callable[[np.ndarray], np.ndarray], x_nm: np.ndarray, masses_amu: np.ndarray,
    kt_kjmol: float, dt_ps: float, rng: np.random.Generator,
) -> np.ndarray:  # fmt: skip
    """Velocities [N, 3] nm/ps for coordinates x [N, 3] nm at thermal energy kT (kJ/mol).

    Drawn from ``LangevinMiddleIntegrator``'s stationary p(v | x) in the harmonic approximation
    at x (module doc); exact for a harmonic potential, Maxwell-Boltzmann for dt -> 0.
    """
    x = np.asarray(x_nm, dtype=np.float64)
    omega2, grad = mass_weighted_hessian(grad_fn, x, masses_amu)
    lam, modes = np.linalg.eigh(omega2)
    # 1 - (w dt/2)^2 per mode; modes with w dt >= 2 are unstable at this dt anyway
    width = np.sqrt(np.clip(1.0 - 0.25 * dt_ps**2 * np.clip(lam, 0.0, None), 0.0, 1.0))
    xi = rng.standard_normal(x.size)
    u = modes @ (width * (modes.T @ xi)) * np.sqrt(kt_kjmol)  # mass-weighted, sqrt(amu) nm/ps
    m = np.repeat(np.asarray(masses_amu, dtype=np.float64), 3)
    v = u / np.sqrt(m) + 0.5 * dt_ps * grad / m
    return v.reshape(x.shape)


def torch_gradient(energy: Callable) -> Callable[[np.ndarray], np.ndarray]:
    """``grad_fn`` for the functions above from a torch energy ([B, N, 3] nm -> [B] kJ/mol)."""
    import torch

    def grad_fn(x: np.ndarray) -> np.ndarray:
        with torch.enable_grad():
            xt = torch.as_tensor(x, dtype=torch.float64).requires_grad_(True)
            (g,) = torch.autograd.grad(energy(xt).sum(), xt)
        return g.detach().numpy()

    return grad_fn
