"""EGNN dynamics of DiffSBDD's conditional full-atom model (the denoising network).

Same function and parameter names as DiffSBDD's ``EGNNDynamics``/``EGNN`` so a published state
dict loads with ``strict=True``. Coordinates are in Å (normalisation factor 1), features are
one-hot/4. Ligand nodes come first, then pocket nodes; only ligand coordinates move.

Each block's last coordinate layer (bias-free Linear hidden -> 1) is ONE module shared by
``coord_mlp`` and ``cross_product_mlp``, as in DiffSBDD; ``state_dict()`` still writes it under
both names and ``parameters()`` yields it once, so fine-tuning keeps the two equal.

For speed the first Linear of every edge MLP is split into per-node projections that are then
gathered per edge (W [h_i, h_j, e] = W_i h_i + W_j h_j + W_e e; the coordinate and cross-product
MLPs share one gather), and activations run in place when no gradient is needed; this is the same
function up to float rounding, checked against the reference outputs in tests/sbdd/test_golden.py.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

Tensor = torch.Tensor


@dataclass(frozen=True)
class DynamicsConfig:
    """Network sizes and options (DiffSBDD ``egnn_params``)."""

    atom_nf: int = 10
    residue_nf: int = 10
    joint_nf: int = 32
    hidden_nf: int = 128
    n_layers: int = 5
    inv_sublayers: int = 1
    attention: bool = True
    tanh: bool = True
    norm_constant: float = 1.0
    normalization_factor: float = 100.0
    aggregation_method: str = "sum"
    edge_cutoff_ligand: float | None = None
    edge_cutoff_pocket: float | None = 5.0
    edge_cutoff_interaction: float | None = 5.0
    reflection_equivariant: bool = False
    coords_range: float = 15.0


def _edge_silu_linear(lins: list[nn.Linear], h: Tensor, row: Tensor, col: Tensor,
                      e: Tensor) -> Tensor:
    """``silu(lin(cat([h[row], h[col], e])))`` for several Linears at once, concatenated.

    Computed via per-node projections gathered per edge (the same function up to rounding);
    in place when no gradient is needed, to save memory traffic.
    """
    nf = h.shape[1]
    w = torch.cat([lin.weight for lin in lins]) if len(lins) > 1 else lins[0].weight
    b = torch.cat([lin.bias for lin in lins]) if len(lins) > 1 else lins[0].bias
    node = h @ torch.cat([w[:, :nf], w[:, nf:2 * nf]]).T
    k = w.shape[0]
    if torch.is_grad_enabled():
        out = node[row, :k] + node[col, k:] + torch.addmm(b, e, w[:, 2 * nf:].T)
        return torch.nn.functional.silu(out)
    out = node[:, :k].index_select(0, row)
    out += node[:, k:].index_select(0, col)
    out.addmm_(e, w[:, 2 * nf:].T)
    out += b
    return torch.nn.functional.silu(out, inplace=True)


def _aggregate(data: Tensor, row: Tensor, n: int, factor: float, method: str) -> Tensor:
    out = data.new_zeros((n, data.shape[1])).index_add_(0, row, data)
    if method == "sum":
        return out / factor
    if method == "mean":
        count = data.new_zeros(n).index_add_(0, row, data.new_ones(row.shape[0])).clamp_min(1)
        return out / count[:, None]
    raise ValueError(f"unknown aggregation_method {method!r}")


class GCL(nn.Module):
    """Invariant message-passing layer with attention gate (DiffSBDD ``GCL``)."""

    def __init__(self, hidden_nf: int, edges_in_d: int, normalization_factor: float,
                 aggregation_method: str, attention: bool):
        super().__init__()
        self.normalization_factor = normalization_factor
        self.aggregation_method = aggregation_method
        self.attention = attention
        self.edge_mlp = nn.Sequential(
            nn.Linear(2 * hidden_nf + edges_in_d, hidden_nf), nn.SiLU(),
            nn.Linear(hidden_nf, hidden_nf), nn.SiLU(),
        )
        self.node_mlp = nn.Sequential(
            nn.Linear(2 * hidden_nf, hidden_nf), nn.SiLU(), nn.Linear(hidden_nf, hidden_nf)
        )
        if attention:
            self.att_mlp = nn.Sequential(nn.Linear(hidden_nf, 1), nn.Sigmoid())

    def forward(self, h: Tensor, row: Tensor, col: Tensor, edge_attr: Tensor) -> Tensor:
        m = _edge_silu_linear([self.edge_mlp[0]], h, row, col, edge_attr)
        m = torch.nn.functional.silu(self.edge_mlp[2](m), inplace=not torch.is_grad_enabled())
        if self.attention:
            m = m * self.att_mlp(m)
        agg = _aggregate(m, row, h.shape[0], self.normalization_factor, self.aggregation_method)
        return h + self.node_mlp(torch.cat([h, agg], dim=1))


class EquivariantUpdate(nn.Module):
    """Coordinate update from distance directions and (optionally) cross products."""

    def __init__(self, hidden_nf: int, edges_in_d: int, normalization_factor: float,
                 aggregation_method: str, tanh: bool, coords_range: float,
                 reflection_equivariant: bool):
        super().__init__()
        self.tanh = tanh
        self.coords_range = coords_range
        self.normalization_factor = normalization_factor
        self.aggregation_method = aggregation_method
        self.reflection_equivariant = reflection_equivariant
        last = nn.Linear(hidden_nf, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)
        self.coord_mlp = nn.Sequential(
            nn.Linear(2 * hidden_nf + edges_in_d, hidden_nf), nn.SiLU(),
            nn.Linear(hidden_nf, hidden_nf), nn.SiLU(), last,
        )
        if not reflection_equivariant:
            # The same `last` module: one shared tensor, stored under both names.
            self.cross_product_mlp = nn.Sequential(
                nn.Linear(2 * hidden_nf + edges_in_d, hidden_nf), nn.SiLU(),
                nn.Linear(hidden_nf, hidden_nf), nn.SiLU(), last,
            )

    def _scalar(self, mlp: nn.Sequential, first: Tensor) -> Tensor:
        out = mlp[4](torch.nn.functional.silu(mlp[2](first), inplace=not torch.is_grad_enabled()))
        return torch.tanh(out) * self.coords_range if self.tanh else out

    def forward(self, h: Tensor, x: Tensor, row: Tensor, col: Tensor, coord_diff: Tensor,
                coord_cross: Tensor | None, edge_attr: Tensor, move_mask: Tensor) -> Tensor:
        mlps = [self.coord_mlp] + ([] if self.reflection_equivariant else [self.cross_product_mlp])
        first = _edge_silu_linear([m[0] for m in mlps], h, row, col, edge_attr)
        hid = self.coord_mlp[0].out_features
        trans = coord_diff * self._scalar(self.coord_mlp, first[:, :hid])
        if not self.reflection_equivariant:
            trans = trans + coord_cross * self._scalar(self.cross_product_mlp, first[:, hid:])
        agg = _aggregate(trans, row, x.shape[0], self.normalization_factor,
                         self.aggregation_method)
        return x + agg * move_mask


class EquivariantBlock(nn.Module):
    """``inv_sublayers`` GCLs followed by one equivariant coordinate update."""

    def __init__(self, cfg: DynamicsConfig, edge_feat_nf: int = 2):
        super().__init__()
        self.norm_constant = cfg.norm_constant
        self.reflection_equivariant = cfg.reflection_equivariant
        self.n_sub = cfg.inv_sublayers
        for i in range(cfg.inv_sublayers):
            self.add_module(f"gcl_{i}", GCL(cfg.hidden_nf, edge_feat_nf, cfg.normalization_factor,
                                            cfg.aggregation_method, cfg.attention))
        self.gcl_equiv = EquivariantUpdate(
            cfg.hidden_nf, edge_feat_nf, cfg.normalization_factor, cfg.aggregation_method,
            cfg.tanh, cfg.coords_range, cfg.reflection_equivariant,
        )

    def forward(self, h: Tensor, x: Tensor, row: Tensor, col: Tensor, d2_input: Tensor,
                node_sample: Tensor, n_samples: int, move_mask: Tensor) -> tuple[Tensor, Tensor]:
        diff = x[row] - x[col]
        d2 = (diff**2).sum(1, keepdim=True)
        coord_diff = diff / (torch.sqrt(d2 + 1e-8) + self.norm_constant)
        coord_cross = None
        if not self.reflection_equivariant:
            centre = x.new_zeros((n_samples, 3)).index_add_(0, node_sample, x)
            count = x.new_zeros(n_samples).index_add_(0, node_sample, x.new_ones(x.shape[0]))
            centre = centre / count.clamp_min(1)[:, None]
            xc = x - centre[node_sample]
            cross = torch.cross(xc[row], xc[col], dim=1)
            coord_cross = cross / (torch.linalg.norm(cross, dim=1, keepdim=True)
                                   + self.norm_constant)
        edge_attr = torch.cat([d2, d2_input], dim=1)
        for i in range(self.n_sub):
            h = self._modules[f"gcl_{i}"](h, row, col, edge_attr)
        x = self.gcl_equiv(h, x, row, col, coord_diff, coord_cross, edge_attr, move_mask)
        return h, x


class EGNN(nn.Module):
    """Embedding, ``n_layers`` equivariant blocks, output embedding."""

    def __init__(self, cfg: DynamicsConfig):
        super().__init__()
        in_nf = cfg.joint_nf + 1  # + time
        self.n_layers = cfg.n_layers
        self.embedding = nn.Linear(in_nf, cfg.hidden_nf)
        self.embedding_out = nn.Linear(cfg.hidden_nf, in_nf)
        for i in range(cfg.n_layers):
            self.add_module(f"e_block_{i}", EquivariantBlock(cfg))

    def forward(self, h: Tensor, x: Tensor, row: Tensor, col: Tensor, node_sample: Tensor,
                n_samples: int, move_mask: Tensor) -> tuple[Tensor, Tensor]:
        d2_input = ((x[row] - x[col]) ** 2).sum(1, keepdim=True)
        h = self.embedding(h)
        for i in range(self.n_layers):
            h, x = self._modules[f"e_block_{i}"](h, x, row, col, d2_input, node_sample,
                                                 n_samples, move_mask)
        return self.embedding_out(h), x


def _pair_distances(a: Tensor, b: Tensor) -> Tensor:
    # Direct differences (no |a|^2+|b|^2-2ab trick): edges 2e-5 Å from the cutoff must not flip.
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def build_edges(x_lig: Tensor, x_pocket: Tensor, lig_mask: Tensor, pocket_mask: Tensor,
                cutoff_ligand: float | None, cutoff_pocket: float | None,
                cutoff_interaction: float | None) -> Tensor:
    """Edges (receiver, sender) within each sample over the ligand-then-pocket node list.

    Ligand-ligand pairs within ``cutoff_ligand`` (all pairs if None, self-loops included),
    pocket-pocket within ``cutoff_pocket``, ligand-pocket within ``cutoff_interaction`` in both
    directions; distances in Å, ``<=``. Returned row-major over the full adjacency matrix, as
    DiffSBDD builds them. Masks must be sorted sample indices.
    """
    n_lig = x_lig.shape[0]
    n_tot = n_lig + x_pocket.shape[0]
    n_samples = int(max(lig_mask.max().item() if n_lig else -1,
                        pocket_mask.max().item() if len(pocket_mask) else -1)) + 1
    lig_counts = torch.bincount(lig_mask, minlength=n_samples).tolist()
    poc_counts = torch.bincount(pocket_mask, minlength=n_samples).tolist()
    rows, cols = [], []
    l0 = 0
    p0 = n_lig
    for b in range(n_samples):
        nl, npk = lig_counts[b], poc_counts[b]
        xl, xp = x_lig[l0:l0 + nl], x_pocket[p0 - n_lig:p0 - n_lig + npk]

        def add(adj: Tensor, r_off: int, c_off: int) -> None:
            r, c = torch.nonzero(adj, as_tuple=True)
            rows.append(r + r_off)
            cols.append(c + c_off)

        if cutoff_ligand is None:
            add(torch.ones((nl, nl), dtype=torch.bool, device=x_lig.device), l0, l0)
        else:
            add(_pair_distances(xl, xl) <= cutoff_ligand, l0, l0)
        pp = (torch.ones((npk, npk), dtype=torch.bool, device=x_lig.device)
              if cutoff_pocket is None else _pair_distances(xp, xp) <= cutoff_pocket)
        add(pp, p0, p0)
        lp = (torch.ones((nl, npk), dtype=torch.bool, device=x_lig.device)
              if cutoff_interaction is None else _pair_distances(xl, xp) <= cutoff_interaction)
        add(lp, l0, p0)
        add(lp.T, p0, l0)
        l0 += nl
        p0 += npk
    row = torch.cat(rows)
    col = torch.cat(cols)
    order = torch.argsort(row * n_tot + col)
    return torch.stack([row[order], col[order]])


class EGNNDynamics(nn.Module):
    """eps-prediction network: (z_lig, xh_pocket, t) -> (eps_hat_lig, pocket output).

    Inputs are normalised rows ``[x (Å), one-hot/4]``; ``t`` is the fraction t_int/T, shape
    [B, 1] (or a single value). ``film`` is an optional pair (gamma, beta), each [B, joint_nf],
    applied as ``gamma * h + beta`` to the joint ligand+pocket features after the encoders and
    before the time feature is appended.
    """

    def __init__(self, cfg: DynamicsConfig):
        super().__init__()
        self.cfg = cfg
        self.n_dims = 3
        a, r, j = cfg.atom_nf, cfg.residue_nf, cfg.joint_nf
        self.atom_encoder = nn.Sequential(nn.Linear(a, 2 * a), nn.SiLU(), nn.Linear(2 * a, j))
        self.atom_decoder = nn.Sequential(nn.Linear(j, 2 * a), nn.SiLU(), nn.Linear(2 * a, a))
        self.residue_encoder = nn.Sequential(nn.Linear(r, 2 * r), nn.SiLU(), nn.Linear(2 * r, j))
        self.residue_decoder = nn.Sequential(nn.Linear(j, 2 * r), nn.SiLU(), nn.Linear(2 * r, r))
        self.egnn = EGNN(cfg)

    def tied_parameter_names(self, prefix: str = "") -> list[tuple[str, str]]:
        """State-dict names that hold one shared tensor (coord / cross-product last layers)."""
        if self.cfg.reflection_equivariant:
            return []
        return [
            (f"{prefix}egnn.e_block_{k}.gcl_equiv.coord_mlp.4.weight",
             f"{prefix}egnn.e_block_{k}.gcl_equiv.cross_product_mlp.4.weight")
            for k in range(self.cfg.n_layers)
        ]

    def edges(self, x_lig: Tensor, x_pocket: Tensor, lig_mask: Tensor,
              pocket_mask: Tensor) -> Tensor:
        c = self.cfg
        return build_edges(x_lig, x_pocket, lig_mask, pocket_mask, c.edge_cutoff_ligand,
                           c.edge_cutoff_pocket, c.edge_cutoff_interaction)

    def forward(self, xh_lig: Tensor, xh_pocket: Tensor, t: Tensor, lig_mask: Tensor,
                pocket_mask: Tensor, film: tuple[Tensor, Tensor] | None = None,
                return_edges: bool = False):
        n_lig = xh_lig.shape[0]
        x_lig, x_pocket = xh_lig[:, :3], xh_pocket[:, :3]
        h = torch.cat([self.atom_encoder(xh_lig[:, 3:]), self.residue_encoder(xh_pocket[:, 3:])])
        x = torch.cat([x_lig, x_pocket])
        mask = torch.cat([lig_mask, pocket_mask])
        n_samples = int(mask.max().item()) + 1
        if film is not None:
            gamma, beta = film
            h = gamma[mask] * h + beta[mask]
        t = torch.as_tensor(t, dtype=h.dtype, device=h.device)
        if t.numel() == 1:
            h_time = h.new_full((h.shape[0], 1), t.reshape(()).item())
        else:
            h_time = t.reshape(-1, 1)[mask]
        h = torch.cat([h, h_time], dim=1)
        edges = self.edges(x_lig, x_pocket, lig_mask, pocket_mask)
        move_mask = torch.cat([x.new_ones(n_lig), x.new_zeros(xh_pocket.shape[0])])[:, None]
        h_out, x_out = self.egnn(h, x, edges[0], edges[1], mask, n_samples, move_mask)
        vel = x_out - x
        h_out = h_out[:, :-1]
        if torch.isnan(vel).any():
            # DiffSBDD resets a NaN velocity to zero (and says so); keep that behaviour.
            warnings.warn("EGNN produced NaN coordinates; resetting the velocity to zero",
                          RuntimeWarning, stacklevel=2)
            vel = torch.zeros_like(vel)
        out_lig = torch.cat([vel[:n_lig], self.atom_decoder(h_out[:n_lig])], dim=1)
        out_pocket = torch.cat([vel[n_lig:], self.residue_decoder(h_out[n_lig:])], dim=1)
        if return_edges:
            return out_lig, out_pocket, edges
        return out_lig, out_pocket
