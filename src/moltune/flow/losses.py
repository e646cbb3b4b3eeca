"""The transport-flow training objective (energy-based, both directions, float64 energies).

For a flow T from temperature T_s to T_t (b = 1/kT in mol/kJ):

    forward term  L_F = E_{x ~ p_s}[ b_t U(T(x))    - log|det J_T(x)|    ]   (parallel direction)
    inverse term  L_R = E_{y ~ p_t}[ b_s U(T^-1(y)) - log|det J_T^-1(y)| ]   (sequential direction)

Up to constants these are KL(T#p_s || p_t) and KL(T^-1#p_t || p_s); training both matters (the
forward term alone lets the map collapse onto a mode). For the identity map L_F = b_t <U>_s and
L_R = b_s <U>_t, which is how step-0 losses are checked. Energies are evaluated in float64 and
regularised only far above the physical range: identity up to ``reference + cut_kT * kT``,
logarithmic above (never a clamp, so a broken direction still gets a gradient back).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moltune.physics.units import beta


def regularize(u_kjmol: torch.Tensor, cut_kjmol: float) -> torch.Tensor:
    """Identity below ``cut_kjmol``, ``cut + log(1 + u - cut)`` above (finite, monotone, C1)."""
    from moltune.physics.energy import regularize_energy

    return regularize_energy(u_kjmol, cut_kjmol)


@dataclass
class TransportTerms:
    """Per-sample terms of one batch (float64): losses, energies (kJ/mol), log-determinants."""

    loss_forward: torch.Tensor  # [B] b_t U_reg(T(x)) - logdet
    loss_inverse: torch.Tensor  # [B] b_s U_reg(T^-1(y)) - logdet
    u_forward: torch.Tensor  # [B] U(T(x)) unregularised
    u_inverse: torch.Tensor  # [B] U(T^-1(y))
    logdet_forward: torch.Tensor
    logdet_inverse: torch.Tensor
    finite: bool  # every output coordinate finite


def transport_terms(
    flow: torch.nn.Module,
    energy: torch.nn.Module,
    x_source: torch.Tensor,
    y_target: torch.Tensor,
    t_source_K,
    t_target_K,
    u_ref_source: float,
    u_ref_target: float,
    cut_kT: float = 1000.0,
) -> TransportTerms:
    """Both loss terms for a batch of source samples x and target samples y (nm).

    ``u_ref_*`` are reference mean energies (kJ/mol) used to place the regularisation cut at
    ``u_ref + cut_kT * kT`` of the temperature the energy is scored at. Temperatures may be
    floats or per-sample tensors [B] (ladders).
    """
    b_s = torch.as_tensor(beta(t_source_K), dtype=torch.float64)
    b_t = torch.as_tensor(beta(t_target_K), dtype=torch.float64)
    tx, ld_f = flow(x_source, t_source_K, t_target_K)
    tiy, ld_i = flow.inverse(y_target, t_source_K, t_target_K)
    finite = bool(torch.isfinite(tx).all() and torch.isfinite(tiy).all())
    if not finite:  # energies refuse NaN coordinates; the caller skips this step
        nan = tx.new_full((tx.shape[0],), float("nan"), dtype=torch.float64)
        return TransportTerms(nan, nan, nan, nan, ld_f.double(), ld_i.double(), False)
    u_f = energy(tx.double())
    u_i = energy(tiy.double())
    cut_f = u_ref_target + cut_kT / b_t
    cut_i = u_ref_source + cut_kT / b_s
    loss_f = b_t * _regularize_per_sample(u_f, cut_f) - ld_f.double()
    loss_i = b_s * _regularize_per_sample(u_i, cut_i) - ld_i.double()
    return TransportTerms(loss_f, loss_i, u_f, u_i, ld_f.double(), ld_i.double(), True)


def _regularize_per_sample(u: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
    cut = torch.as_tensor(cut, dtype=u.dtype, device=u.device)
    if cut.dim() == 0:
        return regularize(u, float(cut))
    excess = torch.nan_to_num((u - cut).clamp(min=0.0), posinf=torch.finfo(u.dtype).max)
    return torch.where(u <= cut, u, cut + torch.log1p(excess))
