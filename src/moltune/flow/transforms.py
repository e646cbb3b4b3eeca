"""Elementwise invertible maps shared by the flows: bounded affine and circular (Moebius) maps.

Every function returns ``(value, log|d value / d input|)`` elementwise, so a flow's
log-determinant is the SUM of these terms over its coordinates.

The circular map is a Moebius transformation of the unit circle,
``f(z) = e^{i alpha} (z - w) / (1 - conj(w) z)`` with ``|w| < 1``, applied to ``z = e^{i k phi}``
for a rotor with ``k``-fold symmetry, so ``f(phi + 2 pi / k) = f(phi) + 2 pi / k``. ``w = 0``,
``alpha = 0`` is the identity. On the circle ``arg(f(z) / z) = alpha - 2 arg(1 - conj(w) z)``
with ``Re(1 - conj(w) z) > 0``, which gives a continuous lift and the derivative
``(1 - |w|^2) / |1 - conj(w) z|^2``.
"""

from __future__ import annotations

import torch

from moltune.flow.coordinates import wrap

W_MAX = 0.9  # |w| < W_MAX keeps the circular map's derivative within [(1-W)/(1+W), (1+W)/(1-W)]


def bounded_log_scale(raw: torch.Tensor, bound: float) -> torch.Tensor:
    """Soft bound ``bound * tanh(raw / bound)`` (identity near 0, |.| < bound)."""
    return bound * torch.tanh(raw / bound)


def affine(z: torch.Tensor, shift: torch.Tensor, log_scale: torch.Tensor, inverse: bool = False):
    """``z * exp(log_scale) + shift`` (or its inverse)."""
    if inverse:
        return (z - shift) * torch.exp(-log_scale), -log_scale
    return z * torch.exp(log_scale) + shift, log_scale


def moebius_w(v_re: torch.Tensor, v_im: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map an unconstrained 2-vector to ``w`` inside the disc of radius ``W_MAX`` (0 -> 0)."""
    s = W_MAX / torch.sqrt(1.0 + v_re * v_re + v_im * v_im)
    return v_re * s, v_im * s


def moebius(
    phi: torch.Tensor,
    w_re: torch.Tensor,
    w_im: torch.Tensor,
    alpha: torch.Tensor,
    k: torch.Tensor | int = 1,
    inverse: bool = False,
):
    """Circular map of torsions ``phi`` (radians) with ``k``-fold symmetry; returns wrapped angles."""
    k = torch.as_tensor(k, dtype=phi.dtype, device=phi.device)
    w2 = w_re * w_re + w_im * w_im
    if not inverse:
        theta = k * phi
        # a = 1 - conj(w) e^{i theta}
        c, s = torch.cos(theta), torch.sin(theta)
        a_re = 1 - (w_re * c + w_im * s)
        a_im = -(w_re * s - w_im * c)
        out = phi + (alpha - 2 * torch.atan2(a_im, a_re)) / k
        ld = torch.log1p(-w2) - torch.log(a_re * a_re + a_im * a_im)
        return wrap(out), ld
    theta = k * phi - alpha
    # b = 1 + conj(w) e^{i (k phi - alpha)}
    c, s = torch.cos(theta), torch.sin(theta)
    b_re = 1 + (w_re * c + w_im * s)
    b_im = w_re * s - w_im * c
    out = phi + (-alpha - 2 * torch.atan2(b_im, b_re)) / k
    ld = torch.log1p(-w2) - torch.log(b_re * b_re + b_im * b_im)
    return wrap(out), ld


def apply_slots(
    z: torch.Tensor,
    params: torch.Tensor,
    slot_kind: torch.Tensor,
    symmetry: torch.Tensor,
    scale_bound: float,
    inverse: bool = False,
):
    """Transform tokens ``z`` [B, T, 3] slot by slot with ``params`` [B, T, 3, 3].

    Affine slots use (shift, raw log-scale), circular slots (w_re, w_im, alpha); empty slots are
    left alone. Returns ``(z', log|det| [B, T])`` (summed over the three slots).
    """
    from moltune.flow.coordinates import AFFINE, CIRCULAR

    p0, p1, p2 = params.unbind(-1)
    za, lda = affine(z, p0, bounded_log_scale(p1, scale_bound), inverse)
    w_re, w_im = moebius_w(p0, p1)
    zc, ldc = moebius(z, w_re, w_im, p2, symmetry.to(z.dtype), inverse)
    is_aff, is_circ = slot_kind == AFFINE, slot_kind == CIRCULAR
    out = torch.where(is_aff, za, torch.where(is_circ, zc, z))
    ld = torch.where(is_aff, lda, torch.where(is_circ, ldc, torch.zeros_like(lda)))
    return out, ld.sum(-1)


def apply_token_slots(
    z: torch.Tensor,
    params: torch.Tensor,
    kinds: tuple[int, ...],
    symmetries: tuple[int, ...],
    scale_bound: float,
    inverse: bool = False,
):
    """:func:`apply_slots` for one token position with kinds known in advance (Python ints).

    ``z`` [B, 3], ``params`` [B, 3, 3]; only the maps the slots need are evaluated, which keeps
    the sequential (one position at a time) direction cheap. Returns ``(z' [B, 3], ld [B])``.
    """
    from moltune.flow.coordinates import AFFINE, CIRCULAR

    cols, ld = [], z.new_zeros(z.shape[0])
    for s, (kind, k) in enumerate(zip(kinds, symmetries)):
        zs, p = z[:, s], params[:, s]
        if kind == AFFINE:
            zs, l = affine(zs, p[:, 0], bounded_log_scale(p[:, 1], scale_bound), inverse)
            ld = ld + l
        elif kind == CIRCULAR:
            w_re, w_im = moebius_w(p[:, 0], p[:, 1])
            zs, l = moebius(zs, w_re, w_im, p[:, 2], k, inverse)
            ld = ld + l
        cols.append(zs)
    return torch.stack(cols, dim=-1), ld
