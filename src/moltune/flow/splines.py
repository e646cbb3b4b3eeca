"""Rational-quadratic (RQ) spline slot maps (Durkan et al. 2019; circular: Rezende et al. 2020).

Two elementwise maps, each returning ``(value, log|d value / d input|)`` like
``moltune.flow.transforms``:

- :func:`rqs` -- monotone on ``[-bound, bound]`` (a standardised bond, angle or stiff torsion),
  the identity outside, slope 1 at both ends. Parameterised exactly as zuko's
  ``MonotonicRQSTransform`` (soft-clipped raw widths, heights, derivatives; minimum slope
  ``MIN_SLOPE``), so the two agree to rounding; this version also runs the inverse and the
  log-determinant in one pass and evaluates many slots with different parameters at once.
- :func:`circular_rqs` -- a circle diffeomorphism of a torsion with ``k``-fold symmetry: an RQ
  spline ``g`` of ``theta = k phi`` on ``[-pi, pi]`` with equal (learned) end derivatives,
  ``phi' = phi + (g(theta) - theta) / k + shift / k``, so ``phi -> phi + 2 pi / k`` shifts the
  output by ``2 pi / k``.

Raw parameters all zero give uniform bins and unit derivatives: the identity.
:func:`spline_slots` applies them per token slot (:func:`n_spline_params` numbers per slot:
an affine pre-map for bounded slots, then the spline; a rotation for circular slots).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from moltune.flow.coordinates import AFFINE, CIRCULAR, wrap
from moltune.flow.transforms import bounded_log_scale

MIN_SLOPE = 1e-3  # smallest derivative of a spline (largest is 1 / MIN_SLOPE)
SPLINE_BOUND = 5.0  # standardised units: bounded slots are splined on [-5, 5], identity outside


def n_spline_params(bins: int) -> int:
    """Per-slot parameters: widths, heights, derivatives (``bins`` each), affine pair, rotation."""
    return 3 * bins + 3


def _soft_clip(raw: torch.Tensor, factor: float) -> torch.Tensor:
    return raw / (1 + torch.abs(factor * raw / math.log(MIN_SLOPE)))


def _knots(raw: torch.Tensor, lo: float, span: float) -> torch.Tensor:
    """Knot positions [..., K + 1] from raw bin sizes [..., K] (first knot lo, last lo + span)."""
    sizes = F.softmax(_soft_clip(raw, 2.0), dim=-1)
    return F.pad(lo + span * torch.cumsum(sizes, dim=-1), (1, 0), value=lo)


def _derivatives(raw: torch.Tensor) -> torch.Tensor:
    return torch.exp(_soft_clip(raw, 1.0))


def _spline(x, xk, yk, dk, inverse: bool):
    """RQ spline through knots (xk, yk) with knot derivatives dk ([..., K + 1]); x inside.

    Returns ``(out - x, log|d out / d x|)``: the displacement is formed so that it is exactly
    zero when the spline is the identity (equal knots, unit derivatives).
    """
    K = xk.shape[-1] - 1
    shape = torch.broadcast_shapes(x.shape, xk.shape[:-1])
    x = x.expand(shape)
    xk, yk, dk = (v.expand(*shape, K + 1) for v in (xk, yk, dk))
    ref = yk if inverse else xk
    idx = (ref[..., 1:-1] <= x[..., None]).sum(-1, keepdim=True)  # bin index in [0, K - 1]
    both = torch.cat([idx, (idx + 1).clamp_max(K)], dim=-1)
    x0, x1 = xk.gather(-1, both).unbind(-1)
    y0, y1 = yk.gather(-1, both).unbind(-1)
    d0, d1 = dk.gather(-1, both).unbind(-1)
    w, h = x1 - x0, y1 - y0
    s = h / w
    D = d0 + d1 - 2 * s
    if inverse:
        dy = x - y0
        a = h * (s - d0) + dy * D
        b = h * d0 - dy * D
        c = -s * dy
        t = 2 * c / (-b - torch.sqrt((b * b - 4 * a * c).clamp_min(0.0)))
        # x0 + t w - y, written to vanish exactly at the identity
        move = (x0 - y0) + w * (t - dy / h) + dy * (w / h - 1)
    else:
        t = (x - x0) / w
    u = t * (1 - t)
    den = s + D * u
    if not inverse:
        # y0 + h (s t^2 + d0 u) / den - x, using t^2 = t - u
        move = (y0 - x0) + w * (s * t * (s - 1) + u * (s * (d0 - s) - t * D)) / den
    slope = s + (d1 - s) * t * t + (d0 - s) * (1 - t) ** 2  # = d1 t^2 + 2 s u + d0 (1 - t)^2
    ld = 2 * torch.log(s) + torch.log(slope) - 2 * torch.log(den)
    return move, (-ld if inverse else ld)


def rqs(x, w_raw, h_raw, d_raw, bound: float = SPLINE_BOUND, inverse: bool = False):
    """Monotone RQ spline on ``[-bound, bound]``, identity outside (zuko's parameterisation).

    ``x`` [...], ``w_raw`` and ``h_raw`` [..., K], ``d_raw`` [..., K - 1] (interior knots).
    """
    xk = _knots(w_raw, -bound, 2 * bound)
    yk = _knots(h_raw, -bound, 2 * bound)
    dk = F.pad(_derivatives(d_raw), (1, 1), value=1.0)
    inside = (x > -bound) & (x < bound)
    xc = x.clamp(-bound, bound)  # keeps the unused branch finite (and its gradient zero)
    move, ld = _spline(xc, xk, yk, dk, inverse)
    return torch.where(inside, x + move, x), torch.where(inside, ld, torch.zeros_like(ld))


def circular_rqs(phi, w_raw, h_raw, d_raw, shift, k=1, inverse: bool = False):
    """Circular RQ map of torsions ``phi`` (rad) with ``k``-fold symmetry; wrapped output.

    ``w_raw``, ``h_raw``, ``d_raw`` [..., K] (``d_raw[..., 0]`` is the derivative at both ends),
    ``shift`` [...] a rotation of ``k phi`` (rad).
    """
    k = torch.as_tensor(k, dtype=phi.dtype, device=phi.device)
    xk = _knots(w_raw, -math.pi, 2 * math.pi)
    yk = _knots(h_raw, -math.pi, 2 * math.pi)
    d = _derivatives(d_raw)
    dk = torch.cat([d, d[..., :1]], dim=-1)
    if not inverse:
        move, ld = _spline(wrap(k * phi), xk, yk, dk, inverse=False)
        return _wrap_outside(phi + (move + shift) / k), ld
    move, ld = _spline(wrap(k * phi - shift), xk, yk, dk, inverse=True)
    return _wrap_outside(phi + (move - shift) / k), ld


def _wrap_outside(angle: torch.Tensor) -> torch.Tensor:
    """:func:`wrap` where needed only, so an angle already in [-pi, pi) stays bit for bit."""
    inside = (angle >= -math.pi) & (angle < math.pi)
    return torch.where(inside, angle, wrap(angle))


def _split(p: torch.Tensor, bins: int):
    K = bins
    return p[..., :K], p[..., K : 2 * K], p[..., 2 * K : 3 * K], p[..., 3 * K :].unbind(-1)


def spline_slots(
    z: torch.Tensor,
    params: torch.Tensor,
    slot_kind: torch.Tensor,
    symmetry: torch.Tensor,
    bins: int,
    scale_bound: float,
    inverse: bool = False,
):
    """Spline every slot of tokens ``z`` [B, T, 3] with ``params`` [B, T, 3, 3 bins + 3].

    Bounded (``AFFINE``) slots: ``u = z exp(s) + t`` (``s`` soft-bounded by ``scale_bound``),
    then :func:`rqs` of ``u``. ``CIRCULAR`` slots: :func:`circular_rqs`. Empty slots pass
    through. Returns ``(z', log|det| [B, T])`` (summed over the three slots).
    """
    w, h, d, (p_s, p_t, p_rot) = _split(params, bins)
    is_aff, is_circ = slot_kind == AFFINE, slot_kind == CIRCULAR
    out, ld = z, torch.zeros_like(z)
    if bool(is_aff.any()):  # (one token position often has no circular slot, or none bounded)
        ls = bounded_log_scale(p_s, scale_bound)
        if inverse:
            u, lda = rqs(z, w, h, d[..., 1:], inverse=True)
            za, lda = (u - p_t) * torch.exp(-ls), lda - ls
        else:
            za, lda = rqs(z * torch.exp(ls) + p_t, w, h, d[..., 1:])
            lda = lda + ls
        out, ld = torch.where(is_aff, za, out), torch.where(is_aff, lda, ld)
    if bool(is_circ.any()):
        zc, ldc = circular_rqs(z, w, h, d, p_rot, symmetry.to(z.dtype), inverse)
        out, ld = torch.where(is_circ, zc, out), torch.where(is_circ, ldc, ld)
    return out, ld.sum(-1)
