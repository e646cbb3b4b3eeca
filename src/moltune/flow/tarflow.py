"""TarFlow: a stack of autoregressive transformer blocks over atom tokens (Zhai et al. 2024).

Read top to bottom:

1. **Tokens.** A coordinate representation (``moltune.flow.coordinates``) turns a configuration
   into one token per atom (in build order for internal coordinates) with three slots: bond,
   angle, torsion (or x, y, z for Cartesian). A slot is empty, affine, or circular (a torsion).
   A token's *input features* are its slot values: ``z`` for affine slots, ``(cos z, sin z)``
   for circular ones (9 numbers per token).
2. **One block** reads tokens in a fixed order. Position ``p`` sees the features of the tokens
   before it (the input is shifted right by one) plus an embedding of *which* atom sits at ``p``
   (element, residue name, atom name, residue number, position) and of the temperature pair.
   A causal transformer turns that into 9 numbers per token: for each slot either an affine
   update ``z * exp(s) + t`` with a bounded log-scale ``s``, or a circular Moebius map (with the
   rotor's symmetry). Because position ``p`` only reads tokens ``< p``, the Jacobian is
   triangular and its log-determinant is the SUM of the per-slot terms.
3. **The stack** alternates the order (build order, then reversed), so every token is
   eventually conditioned on every other -- no trained mixing matrices.
4. **Identity at start.** The output layer of every block is zero, so every update is the
   identity until training moves it. There is no dropout and no noise anywhere in the map.
5. **Directions.** ``forward`` (T, source -> target) runs every position at once ("parallel").
   ``inverse`` (T^-1) must rebuild the tokens one position at a time; it keeps each layer's
   keys and values in a cache so each step costs one position, stays differentiable (so the
   inverse energy term can be trained) and returns its log-determinant. For a few
   configurations without gradients (a flow-PT swap) it solves the same triangular system by
   fixed-point (Jacobi) iteration instead: every sweep is one parallel pass, sweep k makes
   positions < k exact, so T sweeps are exact and the near-identity maps of transport converge
   in far fewer (5-9 for three trained AA flows). On CPU that is 2.1-2.6x faster for 1-2
   configurations, where the sequential direction is all per-step overhead, and slower from
   about 32 on (3.7x at 512), where the sweeps' arithmetic dominates: hence
   ``FIXED_POINT_MAX_BATCH``. A map far from the identity (random weights) can need all T
   sweeps; ``method=`` chooses explicitly (``benchmarks/bench_flow.py`` times both).
6. **Conditioning.** The temperature pair enters as features (log T_t/T_s, log T_s/300 K,
   log T_t/300 K) through a small MLP added to every position, so one model serves every pair
   of a ladder; the peptide enters only through its atoms' embeddings, so one model can serve
   several peptides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moltune.flow.coordinates import AFFINE, ATOM_NAMES, CIRCULAR, ELEMENTS, RESIDUES, wrap
from moltune.flow.splines import n_spline_params, spline_slots
from moltune.flow.transforms import apply_slots, apply_token_slots

N_FEATURES = 9  # 3 slots x (affine value, cos, sin)
N_PARAMS = 9  # 3 slots x 3 transform parameters
MAX_RESIDUES = 32
INVERSE_METHODS = ("cached", "recompute", "fixed_point")
FIXED_POINT_TOL = 1e-9  # largest token change (nm or rad) of the last fixed-point sweep
FIXED_POINT_MAX_BATCH = 16  # the default inverse uses sweeps up to this batch (CPU crossover)


def token_features(z: torch.Tensor, slot_kind: torch.Tensor) -> torch.Tensor:
    """[B, T, 3] slot values -> [B, T, 9] network inputs (affine value, cos, sin per slot)."""
    aff = (slot_kind == AFFINE).to(z.dtype)
    circ = (slot_kind == CIRCULAR).to(z.dtype)
    f = torch.stack([z * aff, torch.cos(z) * circ, torch.sin(z) * circ], dim=-1)
    return f.flatten(-2)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with an optional key/value cache for one-step decoding."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, h: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        B, T, D = h.shape
        q, k, v = self.qkv(h).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # h holds the newest position only; attend to every cached position and itself
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer (attention + GELU MLP), no dropout."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model),
            nn.GELU(),
            nn.Linear(mlp_ratio * d_model, d_model),
        )

    def forward(self, h: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        h = h + self.attn(self.norm1(h), cache)
        return h + self.mlp(self.norm2(h))


class AutoregressiveBlock(nn.Module):
    """One TarFlow block: a causal transformer predicting each token's update from earlier ones."""

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        n_heads: int,
        max_tokens: int,
        reverse: bool,
        scale_bound: float,
        atom_embeddings: bool = True,
        mlp_ratio: int = 4,
        spline_bins: int = 0,
    ):
        super().__init__()
        self.spline_bins = spline_bins
        self.n_slot_params = n_spline_params(spline_bins) if spline_bins else N_PARAMS // 3
        self.reverse = reverse
        self.scale_bound = scale_bound
        self.atom_embeddings = atom_embeddings
        self.feature_in = nn.Linear(N_FEATURES, d_model)
        self.position = nn.Embedding(max_tokens, d_model)
        self.element = nn.Embedding(len(ELEMENTS) + 1, d_model)
        self.residue = nn.Embedding(len(RESIDUES) + 1, d_model)
        self.atom_name = nn.Embedding(len(ATOM_NAMES) + 1, d_model)
        self.residue_number = nn.Embedding(MAX_RESIDUES, d_model)
        self.condition = nn.Sequential(
            nn.Linear(3, d_model), nn.SiLU(), nn.Linear(d_model, d_model)
        )
        self.layers = nn.ModuleList(
            TransformerLayer(d_model, n_heads, mlp_ratio) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, 3 * self.n_slot_params)
        nn.init.zeros_(self.out.weight)  # the block starts as the identity map
        nn.init.zeros_(self.out.bias)

    def _order(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        perm = torch.arange(n, device=device)
        if self.reverse:
            perm = perm.flip(0)
        return perm, torch.argsort(perm)

    def _dtype(self) -> torch.dtype:
        return self.out.weight.dtype

    def _context(self, rep, perm: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """[B, T, d]: which atom sits at each position, plus the temperature pair."""
        cond = cond.to(self._dtype())
        tok = rep.tokens[perm]
        ctx = self.position(torch.arange(len(perm), device=perm.device))
        if self.atom_embeddings:
            ctx = (
                ctx + self.element(tok[:, 0]) + self.residue(tok[:, 1]) + self.atom_name(tok[:, 2])
            )
            ctx = ctx + self.residue_number(tok[:, 3].clamp_max(MAX_RESIDUES - 1))
        return ctx[None].to(cond.dtype) + self.condition(cond)[:, None]

    def _params(self, h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        out = self.out(self.norm(h)).to(dtype)
        return out.view(*out.shape[:-1], 3, self.n_slot_params)

    def _slot_maps(self, zp, params, kind, sym, inverse: bool = False):
        """Slot maps of tokens [B, T, 3] (block order): affine / Moebius, or RQ splines."""
        if self.spline_bins:
            return spline_slots(zp, params, kind, sym, self.spline_bins, self.scale_bound, inverse)
        return apply_slots(zp, params, kind, sym, self.scale_bound, inverse)

    def _updates(self, zp: torch.Tensor, kind: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Transform parameters [B, T, 3, 3] of every position from the tokens before it."""
        feats = token_features(zp, kind).to(self._dtype())
        shifted = torch.cat([torch.zeros_like(feats[:, :1]), feats[:, :-1]], dim=1)
        h = ctx + self.feature_in(shifted)
        for layer in self.layers:
            h = layer(h)
        return self._params(h, zp.dtype)

    def forward(self, z: torch.Tensor, cond: torch.Tensor, rep):
        """Parallel direction: every token updated at once from the (unchanged) input tokens."""
        perm, inv = self._order(z.shape[1], z.device)
        kind, sym = rep.slot_kind[perm], rep.symmetry[perm]
        zp = z[:, perm]
        params = self._updates(zp, kind, self._context(rep, perm, cond))
        yp, ld = self._slot_maps(zp, params, kind, sym)
        return yp[:, inv], ld.sum(-1)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor, rep, method: str | None = None):
        """T^-1 of this block. ``method``: "cached" (one position at a time with a key/value
        cache; differentiable), "recompute" (the same without cache, O(T^2): the reference) or
        "fixed_point" (Jacobi sweeps, see module doc). None: fixed_point for at most
        ``FIXED_POINT_MAX_BATCH`` configurations without gradients, else cached."""
        if method is None:
            small = y.shape[0] <= FIXED_POINT_MAX_BATCH
            method = "fixed_point" if small and not torch.is_grad_enabled() else "cached"
        if method not in INVERSE_METHODS:
            raise ValueError(f"inverse method must be one of {INVERSE_METHODS}, got {method!r}")
        perm, inv = self._order(y.shape[1], y.device)
        kind, sym = rep.slot_kind[perm], rep.symmetry[perm]
        yp = y[:, perm]
        ctx = self._context(rep, perm, cond)
        if method == "fixed_point":
            xp, ld = self._fixed_point_inverse(yp, kind, sym, ctx)
            return xp[:, inv], ld
        use_cache = method == "cached"
        kinds, syms = kind.tolist(), sym.tolist()
        caches = [{} for _ in self.layers]
        prev = ctx.new_zeros(yp.shape[0], N_FEATURES)
        inputs, xs, lds = [], [], []
        for p in range(yp.shape[1]):
            inputs.append(ctx[:, p] + self.feature_in(prev))
            if use_cache:
                h = inputs[-1][:, None]
                for layer, cache in zip(self.layers, caches):
                    h = layer(h, cache)
            else:  # recompute the whole prefix (reference for the cache; O(T^2) layer calls)
                h = torch.stack(inputs, dim=1)
                for layer in self.layers:
                    h = layer(h)
                h = h[:, -1:]
            params = self._params(h[:, 0], y.dtype)
            if self.spline_bins:
                x_p, ld_p = self._slot_maps(
                    yp[:, p, None], params[:, None], kind[p, None], sym[p, None], inverse=True
                )
                x_p, ld_p = x_p[:, 0], ld_p[:, 0]
            else:
                x_p, ld_p = apply_token_slots(
                    yp[:, p], params, kinds[p], syms[p], self.scale_bound, inverse=True
                )
            xs.append(x_p)
            lds.append(ld_p)
            prev = token_features(x_p[:, None], kind[p : p + 1])[:, 0].to(ctx.dtype)
        x = torch.stack(xs, dim=1)
        return x[:, inv], torch.stack(lds, dim=1).sum(-1)

    def _fixed_point_inverse(self, yp, kind, sym, ctx, tol: float = FIXED_POINT_TOL):
        """Solve x = update^-1(y; params(x_<p)) by sweeps from x = y (tokens in block order)."""
        circular = kind == CIRCULAR
        xp = yp
        for _ in range(yp.shape[1] + 1):  # causality: sweep k fixes position k-1 exactly
            new, ld = self._slot_maps(yp, self._updates(xp, kind, ctx), kind, sym, inverse=True)
            change = torch.where(circular, wrap(new - xp), new - xp).abs().max()
            xp = new
            if not change > tol:  # also stops on NaN instead of sweeping on
                break
        return xp, ld.sum(-1)


class TarFlow(nn.Module):
    """Token-space TarFlow core: ``n_blocks`` autoregressive blocks, order reversed between them."""

    def __init__(
        self,
        n_blocks: int = 4,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        max_tokens: int = 256,
        scale_bound: float = 1.0,
        atom_embeddings: bool = True,
        mlp_ratio: int = 4,
        spline_bins: int = 0,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            AutoregressiveBlock(
                d_model,
                n_layers,
                n_heads,
                max_tokens,
                reverse=bool(b % 2),
                scale_bound=scale_bound,
                atom_embeddings=atom_embeddings,
                mlp_ratio=mlp_ratio,
                spline_bins=spline_bins,
            )
            for b in range(n_blocks)
        )

    def forward(self, z: torch.Tensor, cond: torch.Tensor, rep):
        ld = z.new_zeros(z.shape[0])
        for block in self.blocks:
            z, ld_b = block(z, cond, rep)
            ld = ld + ld_b
        return z, ld

    def inverse(self, z: torch.Tensor, cond: torch.Tensor, rep, method: str | None = None):
        ld = z.new_zeros(z.shape[0])
        for block in reversed(self.blocks):
            z, ld_b = block.inverse(z, cond, rep, method=method)
            ld = ld + ld_b
        return z, ld
