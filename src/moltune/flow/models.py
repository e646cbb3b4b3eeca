"""Transport flows between temperatures: the interface, the identity control and the baseline.

A transport flow maps configurations sampled at ``t_source_K`` towards the Boltzmann distribution
at ``t_target_K``:

    forward(x_nm [B, N, 3], t_source_K, t_target_K) -> (y_nm, log|det J_T(x)| [B])
    inverse(y_nm, t_source_K, t_target_K)           -> (x_nm, log|det J_T^-1(y)| [B])

(temperatures a float or a tensor [B]). :class:`TransportFlow` composes a coordinate
representation (``moltune.flow.coordinates``) with a *core* acting on its tokens; the
log-determinant includes the representation's Jacobians, so it is the log|det| in Cartesian space.

Named flows (:func:`make_flow`): ``identity`` (the naive swap control), ``baseline_ic`` (the
per-coordinate internal-coordinate flow, about 130 parameters for AA: the control the TarFlow
must beat), ``spline_ic`` (that, then a per-coordinate RQ spline layer, ``spline_bins`` bins, then
``couplings`` coupling spline layers that let one coordinate's map depend on others) and
``tarflow`` (``moltune.flow.tarflow``; ``spline_bins`` > 0 makes its blocks and per-coordinate
layers splines).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from moltune.flow.coordinates import (
    AFFINE,
    CIRCULAR,
    NONE,
    Representation,
    make_representation,
)
from moltune.flow.splines import SPLINE_BOUND, n_spline_params, spline_slots
from moltune.flow.transforms import affine, moebius, moebius_w

T_REF_K = 300.0


def temperature_features(t_source_K, t_target_K, batch: int, like: torch.Tensor) -> torch.Tensor:
    """[B, 3] conditioning features: log(T_t/T_s), log(T_s/300 K), log(T_t/300 K)."""
    ts = torch.as_tensor(t_source_K, dtype=like.dtype, device=like.device).expand(batch)
    tt = torch.as_tensor(t_target_K, dtype=like.dtype, device=like.device).expand(batch)
    return torch.stack(
        [torch.log(tt / ts), torch.log(ts / T_REF_K), torch.log(tt / T_REF_K)], dim=-1
    )


class IdentityFlow(nn.Module):
    """The identity map (naive replica swap): y = x, log|det| = 0."""

    def forward(self, x_nm, t_source_K=None, t_target_K=None):
        return x_nm, x_nm.new_zeros(x_nm.shape[0])

    def inverse(self, y_nm, t_source_K=None, t_target_K=None):
        return y_nm, y_nm.new_zeros(y_nm.shape[0])


class TransportFlow(nn.Module):
    """``decode . core . encode``: a token-space core under a coordinate representation.

    The core has ``forward(z, cond, rep)`` and ``inverse(z, cond, rep)`` returning
    ``(z', log|det| [B])``. Networks run in their parameter dtype (float32 by default); the
    coordinates and the elementwise updates stay in the input's dtype, so float64 input keeps
    float64 precision (and the identity stays exact).
    """

    def __init__(self, representation: Representation, core: nn.Module):
        super().__init__()
        self.representation = representation
        self.core = core

    def _run(self, x, t_source_K, t_target_K, inverse: bool, **kw):
        rep = self.representation
        z, frame, ld0 = rep.encode(x)
        cond = temperature_features(t_source_K, t_target_K, x.shape[0], z)
        fn = self.core.inverse if inverse else self.core.forward
        z2, ld1 = fn(z, cond, rep, **kw)
        y, ld2 = rep.decode(z2, frame)
        return y, ld0 + ld1 + ld2

    def forward(self, x_nm, t_source_K, t_target_K):
        """Parallel direction T (source -> target)."""
        return self._run(x_nm, t_source_K, t_target_K, inverse=False)

    def inverse(self, y_nm, t_source_K, t_target_K, **kw):
        """T^-1 (target -> source); sequential for autoregressive cores."""
        return self._run(y_nm, t_source_K, t_target_K, inverse=True, **kw)


class PerCoordinateFlow(nn.Module):
    """Baseline core: each coordinate transformed on its own, conditioned on a = log(T_t/T_s).

    Affine slots: ``z' = c + exp(a s) (z - c)`` (a learned log-scale rate ``s`` and centre ``c``
    per coordinate; the reverse pair is the exact inverse). Circular slots: a Moebius map with
    the rotor's symmetry, ``w = W(a v)``, ``alpha = a alpha0``. Starts as the identity.
    """

    def __init__(self, n_tokens: int):
        super().__init__()
        self.log_scale_rate = nn.Parameter(torch.zeros(n_tokens, 3))
        self.centre = nn.Parameter(torch.zeros(n_tokens, 3))
        self.v = nn.Parameter(torch.zeros(n_tokens, 3, 2))
        self.alpha = nn.Parameter(torch.zeros(n_tokens, 3))

    @torch.no_grad()
    def fit_moments(self, z_source, z_target, log_ratio: float, rep: Representation) -> None:
        """Start from a per-coordinate Gaussian fit (a maximum-likelihood start).

        For each affine slot pick the rate and centre that map the source mean and standard
        deviation of the tokens onto the target ones at ``a = log_ratio``; circular slots stay
        at the identity. Tokens are ``rep.encode`` outputs [F, N, 3] of the two temperatures.
        """
        m_s, m_t = z_source.mean(0), z_target.mean(0)
        r = (z_target.std(0) / z_source.std(0).clamp_min(1e-12)).clamp(0.5, 2.0)
        rate = torch.log(r) / log_ratio
        denom = 1 - r
        safe = denom.abs() > 1e-3
        centre = torch.where(safe, (m_t - r * m_s) / torch.where(safe, denom, 1.0), m_s)
        aff = rep.slot_kind == AFFINE
        self.log_scale_rate.copy_(torch.where(aff, rate, 0.0).to(self.log_scale_rate.dtype))
        self.centre.copy_(torch.where(aff, centre.clamp(-5, 5), 0.0).to(self.centre.dtype))

    def n_effective_parameters(self, rep: Representation) -> int:
        return int(2 * (rep.slot_kind == AFFINE).sum() + 3 * (rep.slot_kind == CIRCULAR).sum())

    def _transform(self, z, cond, rep, inverse: bool):
        a = cond[:, 0, None, None].to(z.dtype)  # [B, 1, 1]
        rate, centre = self.log_scale_rate.to(z.dtype), self.centre.to(z.dtype)
        v, alpha = self.v.to(z.dtype), self.alpha.to(z.dtype)
        ls = a * rate
        shift = centre * (1 - torch.exp(ls))
        za, lda = affine(z, shift, ls, inverse)
        w_re, w_im = moebius_w(a * v[..., 0], a * v[..., 1])
        zc, ldc = moebius(z, w_re, w_im, a * alpha, rep.symmetry.to(z.dtype), inverse)
        is_aff, is_circ = rep.slot_kind == AFFINE, rep.slot_kind == CIRCULAR
        out = torch.where(is_aff, za, torch.where(is_circ, zc, z))
        ld = torch.where(is_aff, lda, torch.where(is_circ, ldc, torch.zeros_like(ldc)))
        return out, ld.sum((-1, -2))

    def forward(self, z, cond, rep):
        return self._transform(z, cond, rep, inverse=False)

    def inverse(self, z, cond, rep):
        return self._transform(z, cond, rep, inverse=True)


class PerCoordinateSpline(nn.Module):
    """Spline baseline layer: each slot an RQ spline whose raw parameters are ``a theta``.

    ``a = log(T_t/T_s)``, so the map is the identity for equal temperatures and at
    initialisation (``theta = 0``); bounded slots are splined on the standardised value, torsions
    by a circular spline with the rotor's symmetry (``moltune.flow.splines``).
    """

    def __init__(self, n_tokens: int, bins: int = 8, scale_bound: float = 1.0):
        super().__init__()
        self.bins = bins
        self.scale_bound = scale_bound
        self.theta = nn.Parameter(torch.zeros(n_tokens, 3, n_spline_params(bins)))

    def _transform(self, z, cond, rep, inverse: bool):
        a = cond[:, 0, None, None, None].to(z.dtype)  # [B, 1, 1, 1]
        params = a * self.theta.to(z.dtype)
        out, ld = spline_slots(
            z, params, rep.slot_kind, rep.symmetry, self.bins, self.scale_bound, inverse
        )
        return out, ld.sum(-1)

    def forward(self, z, cond, rep):
        return self._transform(z, cond, rep, inverse=False)

    def inverse(self, z, cond, rep):
        return self._transform(z, cond, rep, inverse=True)


PER_COORDINATE_LAYERS = (PerCoordinateFlow, PerCoordinateSpline)  # few parameters, fast lr


def slot_features(
    z: torch.Tensor, slot_kind: torch.Tensor, symmetry: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Features [B, F] of the slots in ``mask`` [N, 3]: the standardised value of a bounded slot
    (clipped to +-5), ``cos k phi, sin k phi`` of a torsion (``k`` its rotor symmetry, so the
    features do not tell symmetry-equivalent rotamers apart)."""
    zm = z[:, mask]
    circ = (slot_kind == CIRCULAR)[mask]
    k = symmetry[mask].to(z.dtype)
    bounded = zm[:, ~circ].clamp(-SPLINE_BOUND, SPLINE_BOUND)
    angle = k[circ] * zm[:, circ]
    return torch.cat([bounded, torch.cos(angle), torch.sin(angle)], dim=-1)


class CouplingSpline(nn.Module):
    """A coupling layer: RQ splines of the ``transformed`` slots, their parameters predicted by
    an MLP from the ``conditioner`` slots (which pass unchanged) and the temperature pair.

    This is what a per-coordinate layer cannot do: let the map of a bond angle depend on the
    backbone basin (phi, psi), or of one torsion on another. Parameters are ``a MLP(...)`` with
    ``a = log(T_t/T_s)`` and a zero last layer, so the layer is the identity at initialisation
    and for equal temperatures; the inverse is exact and closed-form (the conditioner is
    unchanged), with no autoregressive pass.
    """

    def __init__(
        self,
        rep: Representation,
        conditioner: torch.Tensor,
        transformed: torch.Tensor,
        bins: int = 8,
        hidden: int = 128,
        scale_bound: float = 1.0,
    ):
        super().__init__()
        self.bins, self.scale_bound = bins, scale_bound
        self.register_buffer("conditioner", conditioner.clone())
        self.register_buffer("transformed", transformed.clone())
        n_in = int(conditioner.sum() + (conditioner & (rep.slot_kind == CIRCULAR)).sum()) + 3
        self.n_params = n_spline_params(bins)
        self.net = nn.Sequential(
            nn.Linear(n_in, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, int(transformed.sum()) * self.n_params),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _transform(self, z, cond, rep, inverse: bool):
        w = self.net[0].weight
        feats = slot_features(z, rep.slot_kind, rep.symmetry, self.conditioner)
        raw = self.net(torch.cat([feats.to(w.dtype), cond.to(w.dtype)], dim=-1)).to(z.dtype)
        a = cond[:, 0, None, None].to(z.dtype)
        params = z.new_zeros(*z.shape, self.n_params)
        params[:, self.transformed] = a * raw.view(z.shape[0], -1, self.n_params)
        kind = torch.where(self.transformed, rep.slot_kind, torch.zeros_like(rep.slot_kind))
        out, ld = spline_slots(z, params, kind, rep.symmetry, self.bins, self.scale_bound, inverse)
        return out, ld.sum(-1)

    def forward(self, z, cond, rep):
        return self._transform(z, cond, rep, inverse=False)

    def inverse(self, z, cond, rep):
        return self._transform(z, cond, rep, inverse=True)


def coupling_masks(rep: Representation, n_layers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(conditioner, transformed) slot masks of ``n_layers`` coupling layers.

    The conditioner is always among the slow torsions (circular, no rotor symmetry: the
    backbone phi, psi, ...), which say which basin a configuration is in and are few, so the
    layers learn basin-dependent maps without fitting noise in dozens of fast coordinates.
    Cycle: every other slot given the slow torsions; the odd slow torsions (in build order)
    given the even ones; the even given the odd. Layers with nothing to move are left out.
    """
    slow = (rep.slot_kind == CIRCULAR) & (rep.symmetry == 1)
    rank = torch.cumsum(slow.flatten().long(), 0).view_as(slow) - 1
    even = slow & (rank % 2 == 0)
    odd = slow & ~even
    cycle = [(slow, (rep.slot_kind != NONE) & ~slow), (even, odd), (odd, even)]
    layers = [cycle[i % 3] for i in range(n_layers)]
    return [(c, t) for c, t in layers if bool(t.any())]


class SequentialCore(nn.Module):
    """Cores applied one after another (inverse in reverse order); log-determinants add."""

    def __init__(self, cores: list[nn.Module]):
        super().__init__()
        self.cores = nn.ModuleList(cores)

    def forward(self, z, cond, rep):
        ld = z.new_zeros(z.shape[0])
        for core in self.cores:
            z, l = core(z, cond, rep)
            ld = ld + l
        return z, ld

    def inverse(self, z, cond, rep, **kw):
        ld = z.new_zeros(z.shape[0])
        for core in reversed(self.cores):
            z, l = core.inverse(z, cond, rep, **(kw if hasattr(core, "blocks") else {}))
            ld = ld + l
        return z, ld


FLOWS = ("identity", "baseline_ic", "spline_ic", "tarflow")


def make_flow(name: str, topology, representation: str = "internal", **kwargs: Any) -> nn.Module:
    """Build a named flow for ``topology`` (call ``flow.representation.fit(xyz)`` before training)."""
    from moltune.common.errors import InvalidInputError

    if name == "identity":
        return IdentityFlow()
    rep = make_representation(representation, topology)
    bins = int(kwargs.pop("spline_bins", 0) or 0)
    if name == "baseline_ic":
        return TransportFlow(rep, PerCoordinateFlow(rep.n_tokens))
    if name == "spline_ic":
        core = _per_coordinate(rep, bins or 8)
        n_couplings = int(kwargs.pop("couplings", 0) or 0)
        hidden = int(kwargs.pop("coupling_hidden", 128))
        for conditioner, transformed in coupling_masks(rep, n_couplings):
            core.cores.append(CouplingSpline(rep, conditioner, transformed, bins or 8, hidden))
        return TransportFlow(rep, core)
    if name == "tarflow":
        from moltune.flow.tarflow import TarFlow

        per_coordinate = kwargs.pop("per_coordinate", False)
        core: nn.Module = TarFlow(spline_bins=bins, **kwargs)
        if per_coordinate:
            core = SequentialCore([*_per_coordinate(rep, bins).cores, core])
        return TransportFlow(rep, core)
    raise InvalidInputError(f"unknown flow {name!r}; choose one of {FLOWS}")


def _per_coordinate(rep: Representation, bins: int) -> SequentialCore:
    """The per-coordinate layers: affine / Moebius, then (``bins`` > 0) an RQ spline layer."""
    layers: list[nn.Module] = [PerCoordinateFlow(rep.n_tokens)]
    if bins:
        layers.append(PerCoordinateSpline(rep.n_tokens, bins))
    return SequentialCore(layers)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
