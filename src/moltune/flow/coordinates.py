"""Coordinate representations a transport flow acts in: internal (Z-matrix) or centred Cartesian.

A representation turns Cartesian coordinates ``x`` [B, N, 3] (nm) into a token sequence
``z`` [B, N, 3]: one token per atom with three *slots*. Each slot has a kind:

* ``NONE``     -- no free coordinate (kept at 0),
* ``AFFINE``   -- a real coordinate, standardised (bond length, bond angle, stiff torsion, or a
                  Cartesian component),
* ``CIRCULAR`` -- a periodic torsion in (-pi, pi] with a rotor symmetry (1-, 2- or 3-fold).

and back, carrying a rigid *frame* (the degrees of freedom the representation fixes) through
unchanged. ``encode`` and ``decode`` both return a log|det| so that, for any map ``f`` of the
tokens, ``T = decode . f . encode`` has ``log|det J_T| = ld_encode + ld_f + ld_decode`` in
Cartesian space (the frame's own volume element cancels because the frame is carried through).

Internal coordinates (:class:`InternalCoordinates`): a Z-matrix built from the topology. Heavy
atoms are placed first (backbone N, CA, C before side chains), hydrogens last. Atom ``i`` is
placed from three earlier atoms ``(j, k, l)``: bond ``i-j``, angle ``i-j-k``, torsion
``i-j-k-l``. When ``j`` already has an earlier-placed neighbour ``s != k``, ``l = s``: the torsion
is then measured relative to a sibling (about +-120 or 180 degrees, stiff), so only the truly
rotatable torsions (for AA: psi1, phi2, the NH3 rotor, two methyl rotors, the carboxylate) are
periodic ``CIRCULAR`` slots; omega (the peptide bond) stays an ``AFFINE`` slot. Atoms 0, 1, 2
define the frame: the position of atom 0, the direction 0->1, and the plane of atoms 0, 1, 2
(six external degrees of freedom); their bond lengths and the angle of atom 2 are free.
A sibling torsion at a tetrahedral centre is about +120 or -120 degrees depending only on how
equivalent atoms are *labelled* (H2/H3 of NH3+ or CH3 swap sign between two runs built
alike); its token is the magnitude |phi| and the sign is carried with the frame, so both
labellings share one coordinate (the map |phi| -> sign * |phi| has unit Jacobian).
The Jacobian is analytic: ``|det dx/d(frame, q)| = prod_i r_i^2 sin(theta_i)`` (times a factor
of the frame's orientation that cancels).

Centred Cartesian (:class:`CartesianCoordinates`): the centroid is the frame; tokens are the
centred positions of atoms 0..N-2 (atom N-1 follows from the centroid), so the map is linear
with constant Jacobian that cancels between encode and decode.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from moltune.common.errors import InvalidInputError

NONE, AFFINE, CIRCULAR = 0, 1, 2

# Token vocabularies used by conditional flows to tell atoms apart (0 = unknown).
ELEMENTS = ("H", "C", "N", "O", "S", "P")
RESIDUES = (
    "ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "HIE", "HID", "HIP", "ILE",
    "LEU", "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL", "ACE", "NME",
)  # fmt: skip
ATOM_NAMES = (
    "N", "H", "H1", "H2", "H3", "CA", "HA", "HA2", "HA3", "C", "O", "OXT", "CB", "HB", "HB1",
    "HB2", "HB3", "CG", "CG1", "CG2", "HG", "HG1", "HG2", "HG3", "HG11", "HG12", "HG13", "HG21",
    "HG22", "HG23", "OG", "OG1", "SG", "CD", "CD1", "CD2", "HD1", "HD2", "HD3", "HD11", "HD12",
    "HD13", "HD21", "HD22", "HD23", "OD1", "OD2", "ND1", "ND2", "SD", "CE", "CE1", "CE2", "CE3",
    "HE", "HE1", "HE2", "HE3", "HE21", "HE22", "OE1", "OE2", "NE", "NE1", "NE2", "NZ", "HZ",
    "HZ1", "HZ2", "HZ3", "CZ", "CZ2", "CZ3", "OH", "HH", "NH1", "NH2", "HH11", "HH12", "HH21",
    "HH22", "CH2", "HH2", "CH3",
)  # fmt: skip
BACKBONE = ("N", "CA", "C", "CH3")
MAX_SYMMETRY = 3


def _index(vocab: tuple[str, ...], name: str) -> int:
    return vocab.index(name) + 1 if name in vocab else 0


@dataclass
class ZMatrix:
    """Build order and reference atoms (topology indices; -1 where unused).

    ``order[p]`` is the atom placed ``p``-th; ``ref[p] = (j, k, l)`` are *positions in the build
    order* of the bond, angle and torsion partners of that atom.
    """

    order: np.ndarray  # [N] atom indices in build order
    ref: np.ndarray  # [N, 3] build positions of (j, k, l), -1 where unused
    circular: np.ndarray  # [N] bool: the torsion of this atom is a free rotor (periodic)
    symmetry: np.ndarray  # [N] int: rotor symmetry (1, 2, 3) of circular torsions
    folded: np.ndarray  # [N] bool: sibling torsion at a tetrahedral centre (about +-120 deg)


def _graph(topology) -> tuple[list[set[int]], list]:
    atoms = list(topology.atoms())
    nbrs: list[set[int]] = [set() for _ in atoms]
    for a, b in topology.bonds():
        nbrs[a.index].add(b.index)
        nbrs[b.index].add(a.index)
    return nbrs, atoms


def _is_h(atom) -> bool:
    return atom.element is not None and atom.element.symbol == "H"


def build_zmatrix(topology) -> ZMatrix:
    """A Z-matrix for ``topology`` (OpenMM Topology): heavy backbone first, hydrogens last."""
    nbrs, atoms = _graph(topology)
    n = len(atoms)
    if n < 3:
        raise InvalidInputError(f"internal coordinates need at least 3 atoms, got {n}")
    heavy = [i for i in range(n) if not _is_h(atoms[i])]
    root = next((i for i in heavy if atoms[i].name == "N"), heavy[0] if heavy else 0)
    res_index = {r: k for k, r in enumerate(topology.residues())}

    def priority(i: int) -> tuple:
        a = atoms[i]
        return (_is_h(a), a.name not in BACKBONE, res_index[a.residue], i)

    placed: dict[int, int] = {}  # atom -> build position
    parent: dict[int, int] = {}
    order: list[int] = []
    heap = [(priority(root), root, -1)]
    while heap:
        _, i, par = heapq.heappop(heap)
        if i in placed:
            continue
        placed[i] = len(order)
        order.append(i)
        parent[i] = par
        for nb in nbrs[i]:
            if nb not in placed:
                heapq.heappush(heap, (priority(nb), nb, i))
    if len(order) != n:
        raise InvalidInputError(
            f"topology is not connected: {n - len(order)} atom(s) unreachable from atom {root}"
        )

    ref = -np.ones((n, 3), dtype=np.int64)
    circular = np.zeros(n, dtype=bool)
    folded = np.zeros(n, dtype=bool)
    symmetry = np.ones(n, dtype=np.int64)
    for p, i in enumerate(order):
        if p == 0:
            continue
        j = parent[i]
        if p == 1:
            ref[p, 0] = placed[j]
            continue

        def earlier(a: int, p: int = p) -> list[int]:
            return [b for b in sorted(nbrs[a], key=placed.get) if placed[b] < p]

        k = parent[j] if parent[j] >= 0 else next(b for b in earlier(j) if b != i)
        if p == 2:
            ref[p, :2] = placed[j], placed[k]
            continue
        siblings = [b for b in earlier(j) if b not in (k, i)]
        if siblings:
            l, proper = siblings[0], False
        else:
            cands = [b for b in earlier(k) if b not in (j, i)]
            if not cands:  # k is a dead end (tiny molecule): fall back to any earlier atom
                cands = [b for b in order[:p] if b not in (i, j, k)]
            l, proper = (parent[k] if parent[k] not in (-1, j) else cands[0]), True
        ref[p] = placed[j], placed[k], placed[l]
        folded[p] = not proper and len(nbrs[j]) == 4
        if proper and not _is_peptide_bond(atoms[j], atoms[k]):
            circular[p] = True
            symmetry[p] = _rotor_symmetry(i, j, nbrs, atoms)
    return ZMatrix(np.array(order), ref, circular, symmetry, folded)


def _is_peptide_bond(a, b) -> bool:
    names = {a.name, b.name}
    return names == {"C", "N"} and a.residue.index != b.residue.index


def _rotor_symmetry(i: int, j: int, nbrs, atoms) -> int:
    """n for a rotor whose rotating atoms are n equivalent terminal atoms (NH3, CH3, COO-)."""
    if len(nbrs[i]) != 1:
        return 1
    el = atoms[i].element
    same = [b for b in nbrs[j] if len(nbrs[b]) == 1 and atoms[b].element == el]
    n = len(same)
    return n if n in (2, 3) and n == len(nbrs[j]) - 1 else 1


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def dihedral(p0, p1, p2, p3) -> torch.Tensor:
    """Torsion angle (radians, (-pi, pi]) of points [..., 3] about the axis p1 -> p2."""
    b0 = p0 - p1
    b1 = _unit(p2 - p1)
    b2 = p3 - p2
    v = b0 - (b0 * b1).sum(-1, keepdim=True) * b1
    w = b2 - (b2 * b1).sum(-1, keepdim=True) * b1
    x = (v * w).sum(-1)
    y = (torch.cross(b1, v, dim=-1) * w).sum(-1)
    return torch.atan2(y, x)


def bond_angle(p0, p1, p2) -> torch.Tensor:
    """Angle p0-p1-p2 (radians) computed with atan2 (accurate near 0 and pi)."""
    a, b = p0 - p1, p2 - p1
    return torch.atan2(torch.cross(a, b, dim=-1).norm(dim=-1), (a * b).sum(-1))


def place(a, b, c, r, theta, phi) -> torch.Tensor:
    """NeRF: the point d with |d-c| = r, angle d-c-b = theta, torsion a-b-c-d = phi."""
    bc = _unit(c - b)
    n = _unit(torch.cross(b - a, bc, dim=-1))
    m = torch.cross(n, bc, dim=-1)
    st = torch.sin(theta)
    d = (
        -torch.cos(theta)[..., None] * bc
        + (st * torch.cos(phi))[..., None] * m
        + (st * torch.sin(phi))[..., None] * n
    )
    return c + r[..., None] * d


def wrap(angle: torch.Tensor) -> torch.Tensor:
    """Wrap radians into [-pi, pi)."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def _atom_tokens(topology, order: np.ndarray) -> np.ndarray:
    atoms = list(topology.atoms())
    res_first = {}
    out = np.zeros((len(order), 4), dtype=np.int64)
    for p, i in enumerate(order):
        a = atoms[i]
        sym = a.element.symbol if a.element is not None else ""
        res_first.setdefault(a.residue.index, len(res_first))
        out[p] = (
            _index(ELEMENTS, sym),
            _index(RESIDUES, a.residue.name),
            _index(ATOM_NAMES, a.name),
            res_first[a.residue.index],
        )
    return out


class Representation(nn.Module):
    """Common interface of coordinate representations (see the module docstring).

    Buffers: ``slot_kind`` [N, 3] (NONE/AFFINE/CIRCULAR), ``symmetry`` [N, 3] (rotor n-fold of
    circular slots), ``tokens`` [N, 4] (element, residue name, atom name, residue number),
    ``mean`` / ``std`` [N, 3] (standardisation of affine slots, fitted by :meth:`fit`).
    """

    name = "representation"

    def __init__(self, n_tokens: int):
        super().__init__()
        self.n_atoms = n_tokens
        self.register_buffer("slot_kind", torch.zeros(n_tokens, 3, dtype=torch.long))
        self.register_buffer("symmetry", torch.ones(n_tokens, 3, dtype=torch.long))
        self.register_buffer("tokens", torch.zeros(n_tokens, 4, dtype=torch.long))
        self.register_buffer("mean", torch.zeros(n_tokens, 3, dtype=torch.float64))
        self.register_buffer("std", torch.ones(n_tokens, 3, dtype=torch.float64))

    @property
    def n_tokens(self) -> int:
        return self.slot_kind.shape[0]

    def _raw(self, x: torch.Tensor):
        raise NotImplementedError

    def _unraw(self, raw: torch.Tensor, frame):
        raise NotImplementedError

    def encode(self, x_nm: torch.Tensor):
        """x [B, N, 3] nm -> (z [B, N, 3], frame, log|det| [B])."""
        _check(x_nm, self.n_atoms)
        raw, frame, ld = self._raw(x_nm)
        mean, std = self.mean.to(raw.dtype), self.std.to(raw.dtype)
        aff = (self.slot_kind == AFFINE).to(raw.dtype)
        centred = torch.where(self._periodic_slots(), wrap(raw - mean), raw - mean)
        z = centred / std * (self.slot_kind != NONE)
        ld = ld - (aff * torch.log(std)).sum()
        return z, frame, ld

    def decode(self, z: torch.Tensor, frame):
        """(z [B, N, 3], frame) -> (x [B, N, 3] nm, log|det| [B])."""
        mean, std = self.mean.to(z.dtype), self.std.to(z.dtype)
        aff = (self.slot_kind == AFFINE).to(z.dtype)
        raw = z * std + mean
        x, ld = self._unraw(raw, frame)
        return x, ld + (aff * torch.log(std)).sum()

    @torch.no_grad()
    def fit(self, xyz_nm: np.ndarray | torch.Tensor, max_frames: int = 20000) -> Representation:
        """Set the standardisation (mean, std; circular mean of torsions) from samples [F, N, 3]."""
        x = torch.as_tensor(np.asarray(xyz_nm)[:max_frames], dtype=torch.float64)
        self.mean.zero_()
        self.std.fill_(1.0)
        raw, _, _ = self._raw(x)
        kind = self.slot_kind
        torsion = self._periodic_slots()
        circ_mean = torch.atan2(torch.sin(raw).mean(0), torch.cos(raw).mean(0))
        mean = torch.where(torsion, circ_mean, raw.mean(0))
        centred = torch.where(torsion, wrap(raw - mean), raw - mean)
        std = centred.std(0).clamp_min(1e-6)
        self.mean.copy_(torch.where(kind == NONE, 0.0, mean))
        self.std.copy_(torch.where(kind == AFFINE, std, 1.0))
        return self

    def _periodic_slots(self) -> torch.Tensor:
        return self.slot_kind == CIRCULAR


def _check(x: torch.Tensor, n: int) -> None:
    if x.dim() != 3 or x.shape[1:] != (n, 3):
        raise InvalidInputError(f"expected coordinates [B, {n}, 3], got {tuple(x.shape)}")


class InternalCoordinates(Representation):
    """Bond lengths, angles and torsions from a topology-derived Z-matrix (module docstring)."""

    name = "internal"

    def __init__(self, topology):
        zm = build_zmatrix(topology)
        n = len(zm.order)
        super().__init__(n)
        self.zmatrix = zm
        kind = torch.zeros(n, 3, dtype=torch.long)
        kind[1:, 0] = AFFINE
        kind[2:, 1] = AFFINE
        kind[3:, 2] = torch.where(torch.as_tensor(zm.circular[3:]), CIRCULAR, AFFINE)
        self.slot_kind.copy_(kind)
        self.symmetry[:, 2] = torch.as_tensor(zm.symmetry)
        self.tokens.copy_(torch.as_tensor(_atom_tokens(topology, zm.order)))
        self.register_buffer("order", torch.as_tensor(zm.order))
        self.register_buffer("inv_order", torch.as_tensor(np.argsort(zm.order)))
        self.register_buffer("ref", torch.as_tensor(zm.ref))
        self.register_buffer("torsion_slot", torch.zeros(n, 3, dtype=torch.bool))
        self.torsion_slot[3:, 2] = True
        self.register_buffer("folded", torch.as_tensor(zm.folded))
        self.torsion_slot[:, 2] &= ~self.folded  # |phi| in (0, pi) is not periodic
        # placement levels: atoms of one level depend only on atoms of earlier levels
        level = np.zeros(n, dtype=np.int64)
        for p in range(3, n):
            level[p] = 1 + max(level[zm.ref[p]])
        self._levels = [np.nonzero(level == v)[0] for v in range(1, level.max() + 1)]
        for v, idx in enumerate(self._levels):
            self.register_buffer(f"_level{v}", torch.as_tensor(idx), persistent=False)

    def _periodic_slots(self) -> torch.Tensor:
        return self.torsion_slot

    def _raw(self, x: torch.Tensor):
        xo = x[:, self.order]  # build order
        ref = self.ref
        B, n = xo.shape[0], xo.shape[1]
        raw = xo.new_zeros(B, n, 3)
        pj = xo[:, ref[1:, 0]]
        r = (xo[:, 1:] - pj).norm(dim=-1)
        raw[:, 1:, 0] = r
        theta = bond_angle(xo[:, 2:], xo[:, ref[2:, 0]], xo[:, ref[2:, 1]])
        raw[:, 2:, 1] = theta
        phi = dihedral(xo[:, 3:], xo[:, ref[3:, 0]], xo[:, ref[3:, 1]], xo[:, ref[3:, 2]])
        fold = self.folded[3:]
        raw[:, 3:, 2] = torch.where(fold, phi.abs(), phi)
        sign = torch.where(fold & (phi < 0), -1.0, 1.0).to(x.dtype)
        # frame: position of atom 0, direction 0->1, in-plane unit vector of atom 2
        j2, k2 = int(ref[2, 0]), int(ref[2, 1])
        axis = _unit(xo[:, k2] - xo[:, j2])
        v = xo[:, 2] - xo[:, j2]
        e_perp = _unit(v - (v * axis).sum(-1, keepdim=True) * axis)
        frame = (xo[:, 0], _unit(xo[:, 1] - xo[:, 0]), e_perp, sign)
        ld = -(2 * torch.log(r).sum(-1) + torch.log(torch.sin(theta).abs()).sum(-1))
        return raw, frame, ld

    def _unraw(self, raw: torch.Tensor, frame):
        x0, e1, e_perp, sign = frame
        B, n = raw.shape[0], raw.shape[1]
        r, theta = raw[..., 0], raw[..., 1]
        phi = torch.cat([raw[:, :3, 2], raw[:, 3:, 2] * sign.to(raw.dtype)], dim=1)
        xo = raw.new_zeros(B, n, 3)
        x1 = x0 + r[:, 1, None] * e1
        xo = xo.index_copy(1, torch.tensor([0, 1], device=raw.device), torch.stack([x0, x1], 1))
        j2, k2 = int(self.ref[2, 0]), int(self.ref[2, 1])
        axis = _unit(xo[:, k2] - xo[:, j2])
        t2 = theta[:, 2, None]
        x2 = xo[:, j2] + r[:, 2, None] * (torch.cos(t2) * axis + torch.sin(t2) * e_perp)
        xo = xo.index_copy(1, torch.tensor([2], device=raw.device), x2[:, None])
        for v in range(len(self._levels)):
            idx = getattr(self, f"_level{v}")
            jkl = self.ref[idx]
            new = place(
                xo[:, jkl[:, 2]], xo[:, jkl[:, 1]], xo[:, jkl[:, 0]],
                r[:, idx], theta[:, idx], phi[:, idx],
            )  # fmt: skip
            xo = xo.index_copy(1, idx, new)
        ld = 2 * torch.log(r[:, 1:].abs()).sum(-1) + torch.log(torch.sin(theta[:, 2:]).abs()).sum(
            -1
        )
        return xo[:, self.inv_order], ld


class CartesianCoordinates(Representation):
    """Centred Cartesian coordinates: tokens are x_i - centroid for atoms 0..N-2 (nm)."""

    name = "cartesian"

    def __init__(self, topology):
        n = topology.getNumAtoms()
        super().__init__(n)
        self.slot_kind[:-1] = AFFINE
        self.tokens.copy_(torch.as_tensor(_atom_tokens(topology, np.arange(n))))

    def _raw(self, x: torch.Tensor):
        c = x.mean(1)
        raw = x - c[:, None]
        raw = torch.cat([raw[:, :-1], torch.zeros_like(raw[:, -1:])], 1)
        return raw, c, x.new_zeros(x.shape[0])

    def _unraw(self, raw: torch.Tensor, frame):
        c = frame
        head = raw[:, :-1]
        last = -head.sum(1, keepdim=True)
        x = torch.cat([head, last], 1) + c[:, None]
        return x, raw.new_zeros(raw.shape[0])


REPRESENTATIONS = {"internal": InternalCoordinates, "cartesian": CartesianCoordinates}


def make_representation(name: str, topology) -> Representation:
    """``internal`` or ``cartesian`` representation for ``topology``."""
    if name not in REPRESENTATIONS:
        raise InvalidInputError(
            f"unknown representation {name!r}; choose one of {list(REPRESENTATIONS)}"
        )
    return REPRESENTATIONS[name](topology)
