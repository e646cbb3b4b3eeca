"""Exact, batched, differentiable Amber14 (+ OBC2 implicit solvent) energy in PyTorch.

``TorchEnergy`` reads every parameter from the OpenMM ``System`` that
:func:`moltune.physics.forcefield.create_system` builds and evaluates the same functional form as
OpenMM, for a batch of configurations ``x`` [B, N, 3] in nm, giving U [B] in kJ/mol (forces are
``-dU/dx`` by autograd). Terms:

- ``HarmonicBondForce``: k/2 (r - r0)^2
- ``HarmonicAngleForce``: k/2 (theta - theta0)^2
- ``PeriodicTorsionForce``: k (1 + cos(n phi - phase)), phi the IUPAC dihedral
- ``NonbondedForce`` (NoCutoff): Coulomb + Lennard-Jones over all pairs, Lorentz-Berthelot
  combination, exceptions (scaled 1-4 pairs, excluded pairs) with their own parameters
- ``CustomGBForce`` made by ``implicit/obc2.xml`` (OpenMM's ``GBSAOBC2Force``, Amber igb=5):
  OBC2 Born radii from the pairwise descreening integral I, the GB self and pair terms with
  solute/solvent dielectrics (and Debye screening if kappa > 0) and the ACE surface-area term.

Anything else in the System raises ``NotImplementedError`` (use
:class:`moltune.physics.openmm_energy.OpenMMEnergy` for such force fields).

Two interchangeable evaluators (``backend``): ``"ops"`` writes U as torch tensor ops (any device,
float32/float64 arithmetic as the input, forces and higher derivatives by autograd); ``"kernel"``
(default for CPU inputs, ``"auto"``) is a compiled numba kernel with analytic first derivatives,
always in float64 arithmetic, vectorised with one configuration per SIMD lane (blocks of 32): for
AA about 6 us of CPU per configuration with forces, over 20x OpenMM's CPU platform evaluating one
configuration at a time (benchmarks/bench_energy.py). Both are tested against OpenMM (tests/physics/test_energy.py):
float64 agrees to < 1e-8 kJ/mol and < 1e-5 kJ/mol/nm on MD and strongly perturbed peptides;
float32 inputs agree to 0.02 kJ/mol + 1e-5 |U| (coordinate rounding and, for the ops, float32
arithmetic).

Extreme inputs have a defined result instead of NaN: pair distances are floored at
``PAIR_DISTANCE_FLOOR_NM`` (overlapping atoms give a huge finite energy, zero force along the
floored pair), bond/angle/dihedral geometry uses smoothed norms so that coincident or collinear
atoms give finite forces, and far-apart atoms (1e6 nm) give finite energies. A configuration whose
energy still overflows (float32) reports +inf with zero (never NaN) forces.
"""

from __future__ import annotations

import re
import threading

import numpy as np
import torch

from moltune.common.errors import InvalidInputError

COULOMB_KJ_NM_PER_MOL_E2 = 138.93545764438198
"""1/(4 pi eps0) as OpenMM's NonbondedForce uses it (kJ nm / (mol e^2))."""

PAIR_DISTANCE_FLOOR_NM = 1e-3
"""Nonbonded and GB pair distances below this are treated as this (physically meaningless region,
energies there exceed 1e20 kJ/mol for any pair with Lennard-Jones repulsion)."""

_EPS_LENGTH_NM = 1e-12  # smooths |v| = sqrt(v.v + eps^2) so gradients at v = 0 are 0, not NaN
_EPS_DIHEDRAL = 1e-30  # same for the dihedral (cos, sin) normalisation (units nm^8)


# --------------------------------------------------------------------------------------------
# Parameter extraction from an OpenMM System
# --------------------------------------------------------------------------------------------


def _gb_reference_expressions(solvent_dielectric, solute_dielectric, kappa, sa):
    """Expressions OpenMM's GBSAOBC2Force writes for these settings (to validate a force)."""
    from openmm.app.internal.customgbforces import GBSAOBC2Force

    ref = GBSAOBC2Force(
        solventDielectric=solvent_dielectric, soluteDielectric=solute_dielectric, SA=sa,
        kappa=kappa,
    )
    values = [ref.getComputedValueParameters(i)[:2] for i in range(ref.getNumComputedValues())]
    terms = [ref.getEnergyTermParameters(i) for i in range(ref.getNumEnergyTerms())]
    return values, terms


def _number(pattern: str, text: str) -> float:
    m = re.search(pattern + r"=([-+0-9.eE]+)", text)
    if m is None:
        raise NotImplementedError(f"cannot find {pattern} in GB expression {text!r}")
    return float(m.group(1))


def _extract_gb(force) -> dict:
    """Per-atom OBC2 parameters and global constants from OpenMM's GBSAOBC2Force (CustomGBForce)."""
    import openmm

    if force.getNumGlobalParameters() or force.getNumFunctions() or force.getNumExclusions():
        raise NotImplementedError("CustomGBForce with global parameters/functions/exclusions")
    if force.getNonbondedMethod() != openmm.CustomGBForce.NoCutoff:
        raise NotImplementedError("TorchEnergy supports only NoCutoff GB")
    names = [force.getPerParticleParameterName(i) for i in range(force.getNumPerParticleParameters())]
    if names != ["charge", "or", "sr"]:
        raise NotImplementedError(f"unsupported CustomGBForce per-particle parameters {names}")
    first = force.getEnergyTermParameters(0)[0]
    solvent_d = _number("solventDielectric", first)
    solute_d = _number("soluteDielectric", first)
    kappa = _number("kappa", first)
    n_terms = force.getNumEnergyTerms()
    sa = "ACE" if n_terms == 3 else None
    values, terms = _gb_reference_expressions(solvent_d, solute_d, kappa, sa)
    got_values = [force.getComputedValueParameters(i)[:2] for i in range(force.getNumComputedValues())]
    got_terms = [force.getEnergyTermParameters(i) for i in range(n_terms)]
    if [tuple(v) for v in got_values] != [tuple(v) for v in values] or [
        tuple(t) for t in got_terms
    ] != [tuple(t) for t in terms]:
        raise NotImplementedError(
            "this CustomGBForce is not OpenMM's GBSAOBC2Force (implicit/obc2.xml); "
            "use OpenMMEnergy for it"
        )
    params = np.array([force.getParticleParameters(i) for i in range(force.getNumParticles())])
    return {
        "gb_charge": params[:, 0],
        "gb_or": params[:, 1],
        "gb_sr": params[:, 2],
        "gb_offset_born": _number("offset", values[1][1]),
        "gb_offset_energy": _number("offset", terms[0][0]),
        "gb_coulomb": float(re.search(r"-0\.5\*([0-9.]+)\*", terms[0][0]).group(1)),
        "gb_solvent_dielectric": solvent_d,
        "gb_solute_dielectric": solute_d,
        "gb_kappa": kappa,
        "gb_ace": sa == "ACE",
        "gb_ace_factor": float(terms[1][0].split("*")[0]) if sa == "ACE" else 0.0,
        "gb_ace_probe": float(re.search(r"\(radius\+([0-9.]+)\)", terms[1][0]).group(1))
        if sa == "ACE"
        else 0.0,
    }


def extract_parameters(system) -> dict:
    """All force-field parameters of ``system`` as numpy arrays (OpenMM units: nm, kJ/mol, rad, e).

    Raises ``NotImplementedError`` for a force or setting this module does not reproduce.
    """
    import openmm

    n = system.getNumParticles()
    out: dict = {"n_atoms": n, "has_gb": False}
    seen = set()
    for force in system.getForces():
        kind = type(force).__name__
        if isinstance(force, openmm.CMMotionRemover):
            continue
        if kind in seen:
            raise NotImplementedError(f"more than one {kind} in the System")
        seen.add(kind)
        if isinstance(force, openmm.HarmonicBondForce):
            rows = [force.getBondParameters(i) for i in range(force.getNumBonds())]
            out["bond_idx"] = np.array([[r[0], r[1]] for r in rows], dtype=np.int64).reshape(-1, 2)
            out["bond_r0"] = np.array([r[2]._value for r in rows], dtype=np.float64)
            out["bond_k"] = np.array([r[3]._value for r in rows], dtype=np.float64)
        elif isinstance(force, openmm.HarmonicAngleForce):
            rows = [force.getAngleParameters(i) for i in range(force.getNumAngles())]
            out["angle_idx"] = np.array([r[:3] for r in rows], dtype=np.int64).reshape(-1, 3)
            out["angle_theta0"] = np.array([r[3]._value for r in rows], dtype=np.float64)
            out["angle_k"] = np.array([r[4]._value for r in rows], dtype=np.float64)
        elif isinstance(force, openmm.PeriodicTorsionForce):
            _extract_torsions(force, out)
        elif isinstance(force, openmm.NonbondedForce):
            _extract_nonbonded(force, n, out)
        elif isinstance(force, openmm.CustomGBForce):
            out.update(_extract_gb(force))
            out["has_gb"] = True
        else:
            raise NotImplementedError(
                f"TorchEnergy does not implement {kind}; use moltune.physics.openmm_energy"
            )
        if getattr(force, "usesPeriodicBoundaryConditions", lambda: False)():
            raise NotImplementedError("periodic systems are not supported")
    for key, shape in (("bond_idx", (0, 2)), ("angle_idx", (0, 3))):
        if key not in out:
            out[key] = np.zeros(shape, dtype=np.int64)
    out.setdefault("bond_r0", np.zeros(0)), out.setdefault("bond_k", np.zeros(0))
    out.setdefault("angle_theta0", np.zeros(0)), out.setdefault("angle_k", np.zeros(0))
    if "tors_idx" not in out:
        out.update(tors_idx=np.zeros((0, 4), np.int64), tors_cos=np.zeros((0, 1)),
                   tors_sin=np.zeros((0, 1)), tors_const=0.0)
    if "nb_qq" not in out:
        p = n * (n - 1) // 2
        out.update(nb_qq=np.zeros(p), nb_a=np.zeros(p), nb_c=np.zeros(p))
    return out


def _extract_torsions(force, out: dict) -> None:
    """Group terms by dihedral: k(1+cos(n phi - d)) = k + k cos d cos(n phi) + k sin d sin(n phi)."""
    dihedrals: dict[tuple, list] = {}
    const = 0.0
    for t in range(force.getNumTorsions()):
        i, j, k, l, per, phase, kk = force.getTorsionParameters(t)
        phase, kk = phase._value, kk._value
        if per == 0:
            const += kk * (1.0 + np.cos(phase))
            continue
        dihedrals.setdefault((i, j, k, l), []).append((per, phase, kk))
    nmax = max([p for terms in dihedrals.values() for p, _, _ in terms], default=1)
    idx = np.array(list(dihedrals.keys()), dtype=np.int64).reshape(-1, 4)
    cos_coef = np.zeros((len(idx), nmax))
    sin_coef = np.zeros((len(idx), nmax))
    for d, terms in enumerate(dihedrals.values()):
        for per, phase, kk in terms:
            const += kk
            cos_coef[d, per - 1] += kk * np.cos(phase)
            sin_coef[d, per - 1] += kk * np.sin(phase)
    out.update(tors_idx=idx, tors_cos=cos_coef, tors_sin=sin_coef, tors_const=const)


def _extract_nonbonded(force, n: int, out: dict) -> None:
    """Per-pair Coulomb/LJ coefficients over all i<j pairs: U = qq/r + a/r^12 - c/r^6."""
    import openmm

    if force.getNonbondedMethod() != openmm.NonbondedForce.NoCutoff:
        raise NotImplementedError("TorchEnergy supports only NoCutoff nonbonded interactions")
    if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets():
        raise NotImplementedError("NonbondedForce parameter offsets are not supported")
    q = np.zeros(n)
    sig = np.zeros(n)
    eps = np.zeros(n)
    for a in range(n):
        qa, sa, ea = force.getParticleParameters(a)
        q[a], sig[a], eps[a] = qa._value, sa._value, ea._value
    pi, pj = np.triu_indices(n, 1)
    qq = q[pi] * q[pj]
    s = 0.5 * (sig[pi] + sig[pj])
    e = np.sqrt(eps[pi] * eps[pj])
    pair_index = {(int(a), int(b)): p for p, (a, b) in enumerate(zip(pi, pj))}
    for x in range(force.getNumExceptions()):
        a, b, qqx, sx, ex = force.getExceptionParameters(x)
        p = pair_index[(min(a, b), max(a, b))]
        qq[p], s[p], e[p] = qqx._value, sx._value, ex._value
    out["nb_qq"] = COULOMB_KJ_NM_PER_MOL_E2 * qq
    out["nb_a"] = 4.0 * e * s**12
    out["nb_c"] = 4.0 * e * s**6


# --------------------------------------------------------------------------------------------
# The torch module
# --------------------------------------------------------------------------------------------


def _difference_matrix(n: int, pairs: np.ndarray) -> np.ndarray:
    """[N, K] matrix D with x^T D = x[b] - x[a] for each (a, b) row of ``pairs``."""
    d = np.zeros((n, len(pairs)))
    d[pairs[:, 1], np.arange(len(pairs))] += 1.0
    d[pairs[:, 0], np.arange(len(pairs))] -= 1.0
    return d


def _one_hot(n: int, idx: np.ndarray) -> np.ndarray:
    m = np.zeros((n, len(idx)))
    m[idx, np.arange(len(idx))] = 1.0
    return m


class TorchEnergy(torch.nn.Module):
    """Batched potential energy U(x) in kJ/mol of one molecule, x in nm ([B, N, 3] or [N, 3]).

    Equal to OpenMM's energy for the same System (see tests/physics/test_energy.py for the
    measured agreement). Works in float32 and float64 on any device; parameters are buffers, so
    ``.to(device, dtype)`` moves them; inputs of another dtype/device are handled by casting the
    (small) parameter tensors per call, so keep the module on the inputs' dtype and device for
    speed. Forces are ``-torch.autograd.grad(U.sum(), x)``; see also :meth:`energy_and_forces`.
    """

    def __init__(self, params: dict, backend: str = "auto"):
        super().__init__()
        if backend not in BACKENDS:
            raise InvalidInputError(f"unknown energy backend {backend!r}; choose one of {BACKENDS}")
        self.backend = backend
        self.pair_floor_nm = PAIR_DISTANCE_FLOOR_NM
        self.eps_len_nm = _EPS_LENGTH_NM
        self.eps_dihedral = _EPS_DIHEDRAL
        n = int(params["n_atoms"])
        self.n_atoms = n
        self.has_gb = bool(params["has_gb"])
        pi, pj = np.triu_indices(n, 1)
        self.n_pairs = len(pi)
        f64 = torch.float64

        def buf(name, value, dtype=f64):
            self.register_buffer(name, torch.as_tensor(np.asarray(value), dtype=dtype))

        # one matmul gives every difference vector: pairs, bonds, angle arms, dihedral arms
        bonds, angles, tors = params["bond_idx"], params["angle_idx"], params["tors_idx"]
        vec_pairs = [
            np.stack([pi, pj], 1),
            bonds,
            angles[:, [1, 0]], angles[:, [1, 2]],
            tors[:, [0, 1]], tors[:, [1, 2]], tors[:, [2, 3]],
        ]
        self._sizes = [len(v) for v in vec_pairs]
        self._kernel_params = {
            key: np.ascontiguousarray(params[key], dtype=np.int64)
            for key in ("bond_idx", "angle_idx", "tors_idx")
        }
        self._kernel_cache = None
        buf("diff_matrix", _difference_matrix(n, np.concatenate(vec_pairs, 0).astype(np.int64)))
        buf("bond_r0", params["bond_r0"])
        buf("bond_k", params["bond_k"])
        buf("angle_theta0", params["angle_theta0"])
        buf("angle_k", params["angle_k"])
        buf("tors_cos", params["tors_cos"])
        buf("tors_sin", params["tors_sin"])
        self.tors_const = float(params["tors_const"])
        self.tors_nmax = int(params["tors_cos"].shape[1])
        buf("nb_qq", params["nb_qq"])
        buf("nb_a", params["nb_a"])
        buf("nb_c", params["nb_c"])
        if self.has_gb:
            q, o, s = params["gb_charge"], params["gb_or"], params["gb_sr"]
            # descreening integral I_i = sum_j I(r_ij; or_i, sr_j) over ordered pairs (both halves)
            buf("gb_or1", np.concatenate([o[pi], o[pj]]))
            buf("gb_sr2", np.concatenate([s[pj], s[pi]]))
            buf("gb_sum_matrix", np.concatenate([_one_hot(n, pi).T, _one_hot(n, pj).T], 0))
            buf("gb_gather_i", _one_hot(n, pi))
            buf("gb_gather_j", _one_hot(n, pj))
            buf("gb_or", o)
            buf("gb_sr", s)
            buf("gb_radius_born", o + params["gb_offset_born"])
            buf("gb_radius_energy", o + params["gb_offset_energy"])
            eps_factor = 1.0 / params["gb_solute_dielectric"]
            self.gb_kappa = float(params["gb_kappa"])
            self.gb_inv_solvent = 1.0 / params["gb_solvent_dielectric"]
            self.gb_inv_solute = eps_factor
            k = params["gb_coulomb"]
            buf("gb_self_q2", -0.5 * k * q**2)
            buf("gb_pair_qq", -k * q[pi] * q[pj])
            self.gb_ace = bool(params["gb_ace"])
            buf("gb_ace_coef", params["gb_ace_factor"] * (o + params["gb_offset_energy"]
                                                          + params["gb_ace_probe"]) ** 2)

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_system(cls, system, backend: str = "auto") -> TorchEnergy:
        """Module for an OpenMM System (NoCutoff; Amber-style forces, optional OBC2 GB)."""
        return cls(extract_parameters(system), backend=backend)

    @classmethod
    def from_topology(cls, topology, solvent: str = "obc2", backend: str = "auto") -> TorchEnergy:
        """Module for ``topology`` with moltune's force field (Amber14 + ``solvent``)."""
        from moltune.physics.forcefield import create_system

        return cls.from_system(create_system(topology, solvent=solvent), backend=backend)

    @classmethod
    def from_pdb(cls, path, solvent: str = "obc2", backend: str = "auto") -> TorchEnergy:
        """Module for the molecule in a PDB file (all hydrogens present)."""
        return cls.from_topology(read_pdb_topology(path), solvent=solvent, backend=backend)

    def uses_kernel(self, x: torch.Tensor) -> bool:
        """Whether ``x`` is evaluated by the compiled CPU kernel (else by torch ops)."""
        if self.backend == "ops" or x.device.type != "cpu":
            return False
        if self.has_gb and self.gb_kappa > 0:
            return False
        if self.backend == "kernel":
            return True
        return _numba_available()

    def _kernel_arrays(self):
        if self._kernel_cache is None:
            from moltune.physics._energy_kernel import kernel_arrays

            self._kernel_cache = kernel_arrays(self)
        return self._kernel_cache

    def _apply(self, fn, recurse=True):  # .to()/.float()/... invalidate the kernel's copies
        self._kernel_cache = None
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["_kernel_cache"] = None  # rebuilt from the buffers on first use
        return state

    # ---------------------------------------------------------------- evaluation
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy(x)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """U(x) in kJ/mol, shape [B] (or [] for x [N, 3]); x in nm, float32/float64."""
        x, squeeze = as_batch(x, self.n_atoms)
        if self.uses_kernel(x):
            u = _KernelEnergy.apply(x, self)
        else:
            u = self._energy(_ZeroNaNGrad.apply(x) if x.requires_grad else x)
        # overflow (float32 only) may leave inf - inf; report such configurations as +inf
        u = _NonFiniteToInf.apply(u)
        return u[0] if squeeze else u

    def energy_and_forces(self, x: torch.Tensor, chunk_size: int = 4096):
        """(U [B] kJ/mol, F [B, N, 3] kJ/mol/nm) without keeping a graph, in chunks of configs."""
        x, squeeze = as_batch(x, self.n_atoms)
        if self.uses_kernel(x):
            u, g = _run_kernel(x.detach(), self)
            gn = g.numpy()
            np.negative(gn, out=gn)  # in place, in numpy (see check_coordinates)
            if x.dtype == torch.float32:
                u, g = torch.from_numpy(u.numpy().astype(np.float32)), torch.from_numpy(
                    gn.astype(np.float32))
            u, f = u.to(x.dtype), g.to(x.dtype)
            return (u[0], f[0]) if squeeze else (u, f)
        us, fs = [], []
        for start in range(0, x.shape[0], chunk_size):
            xc = x[start : start + chunk_size].detach().requires_grad_(True)
            with torch.enable_grad():
                u = self.energy(xc)
                (g,) = torch.autograd.grad(u.sum(), xc)
            us.append(u.detach())
            fs.append(-g)
        u, f = torch.cat(us), torch.cat(fs)
        return (u[0], f[0]) if squeeze else (u, f)

    def _p(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, name).to(device=x.device, dtype=x.dtype)

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        p = lambda name: self._p(name, x)
        # [B, 3, K]: every difference vector at once
        v = torch.matmul(x.transpose(1, 2), p("diff_matrix"))
        v_pair, v_bond, v_a1, v_a2, t1, t2, t3 = torch.split(v, self._sizes, dim=2)

        # nonbonded pairs (Coulomb + LJ, exceptions folded into per-pair coefficients)
        r2 = (v_pair * v_pair).sum(1)
        r = torch.sqrt(r2 + _EPS_LENGTH_NM**2).clamp(min=PAIR_DISTANCE_FLOOR_NM)
        inv_r = 1.0 / r
        inv_r2 = inv_r * inv_r
        inv_r6 = inv_r2 * inv_r2 * inv_r2
        u = torch.matmul(inv_r, p("nb_qq"))
        u = u + torch.matmul(inv_r6 * inv_r6, p("nb_a")) - torch.matmul(inv_r6, p("nb_c"))

        # bonds
        if v_bond.shape[2]:
            rb = torch.sqrt((v_bond * v_bond).sum(1) + _EPS_LENGTH_NM**2)
            db = rb - p("bond_r0")
            u = u + torch.matmul(db * db, 0.5 * p("bond_k"))

        # angles: theta = atan2(|a x b|, a . b) (well conditioned everywhere)
        if v_a1.shape[2]:
            cr = torch.linalg.cross(v_a1, v_a2, dim=1)
            sin_part = torch.sqrt((cr * cr).sum(1) + _EPS_LENGTH_NM**4)
            theta = torch.atan2(sin_part, (v_a1 * v_a2).sum(1))
            dt = theta - p("angle_theta0")
            u = u + torch.matmul(dt * dt, 0.5 * p("angle_k"))

        # proper and improper torsions: cos/sin of n*phi by the angle-addition recurrence
        if t1.shape[2]:
            n1 = torch.linalg.cross(t1, t2, dim=1)
            n2 = torch.linalg.cross(t2, t3, dim=1)
            b2 = torch.sqrt((t2 * t2).sum(1) + _EPS_LENGTH_NM**2)
            cx = (n1 * n2).sum(1)
            sy = b2 * (t1 * n2).sum(1)
            rho = torch.sqrt(cx * cx + sy * sy + _EPS_DIHEDRAL)
            c1, s1 = cx / rho, sy / rho
            cs, ss = [c1], [s1]
            for _ in range(self.tors_nmax - 1):
                c, s = cs[-1], ss[-1]
                cs.append(c * c1 - s * s1)
                ss.append(s * c1 + c * s1)
            cn = torch.stack(cs, 2).reshape(B, -1)
            sn = torch.stack(ss, 2).reshape(B, -1)
            u = u + torch.matmul(cn, p("tors_cos").reshape(-1))
            u = u + torch.matmul(sn, p("tors_sin").reshape(-1)) + self.tors_const

        if self.has_gb:
            u = u + self._gb(r, r2, p)
        return u

    def _gb(self, r, r2, p):
        """OBC2 generalised Born + ACE, term by term as in OpenMM's GBSAOBC2Force."""
        rr = torch.cat([r, r], 1)  # ordered pairs (i, j) then (j, i)
        or1, sr2 = p("gb_or1"), p("gb_sr2")
        U = rr + sr2
        L = torch.maximum(or1, (rr - sr2).abs())
        inv_u, inv_l = 1.0 / U, 1.0 / L
        inv_r = 1.0 / rr
        val = 0.5 * (
            inv_l - inv_u
            + 0.25 * (rr - sr2 * sr2 * inv_r) * (inv_u * inv_u - inv_l * inv_l)
            + 0.5 * torch.log(L * inv_u) * inv_r
        )
        val = torch.where(U >= or1, val, torch.zeros_like(val))
        integral = torch.matmul(val, p("gb_sum_matrix"))  # [B, N]
        o = p("gb_or")
        psi = integral * o
        born = 1.0 / (1.0 / o - torch.tanh(psi - 0.8 * psi * psi + 4.85 * psi * psi * psi)
                      / p("gb_radius_born"))
        inv_born = 1.0 / born
        if self.gb_kappa > 0:
            screen = self.gb_inv_solute - torch.exp(-self.gb_kappa * born) * self.gb_inv_solvent
        else:
            screen = self.gb_inv_solute - self.gb_inv_solvent
        u = (screen * p("gb_self_q2") * inv_born).sum(1)
        if self.gb_ace:
            ratio = p("gb_radius_energy") * inv_born
            ratio3 = ratio * ratio * ratio
            u = u + torch.matmul(ratio3 * ratio3, p("gb_ace_coef"))
        bi = torch.matmul(born, p("gb_gather_i"))
        bj = torch.matmul(born, p("gb_gather_j"))
        bb = bi * bj
        f = torch.sqrt(r2 + bb * torch.exp(-r2 / (4.0 * bb)))
        if self.gb_kappa > 0:
            pair_screen = self.gb_inv_solute - torch.exp(-self.gb_kappa * f) * self.gb_inv_solvent
            return u + ((pair_screen / f) * p("gb_pair_qq")).sum(1)
        return u + screen * torch.matmul(1.0 / f, p("gb_pair_qq"))


BACKENDS = ("auto", "kernel", "ops")
"""``ops``: torch tensor ops, autograd forces, any device, supports higher derivatives;
``kernel``: compiled CPU kernel (numba) with analytic forces, first derivatives only;
``auto``: the kernel for CPU inputs when numba is installed, else ops."""


_KERNEL_LOCK = threading.Lock()


def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _run_kernel(x: torch.Tensor, module: TorchEnergy):
    """Energies [B] and gradients dU/dx [B, N, 3] (float64 CPU tensors) from the kernel."""
    import numba

    from moltune.physics._energy_kernel import energy_forces

    xn = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float64)
    u = np.empty(xn.shape[0])
    g = np.empty_like(xn)
    with _KERNEL_LOCK:  # numba's fork-safe thread pool must not be entered concurrently
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        energy_forces(xn, *module._kernel_arrays(), u, g)
    return torch.from_numpy(u), torch.from_numpy(g)


class _KernelEnergy(torch.autograd.Function):
    """U(x) by the compiled kernel; backward uses its analytic gradient (first order only)."""

    @staticmethod
    def forward(ctx, x, module):
        u, g = _run_kernel(x, module)
        ctx.save_for_backward(g.to(x.dtype))
        return u.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_u):
        (g,) = ctx.saved_tensors
        return grad_u[:, None, None] * g, None


class _NonFiniteToInf(torch.autograd.Function):
    """Identity on finite energies and +inf; NaN or -inf (overflow) -> +inf."""

    @staticmethod
    def forward(ctx, u):
        ok = torch.isfinite(u) | (u == float("inf"))
        return torch.where(ok, u, torch.full_like(u, float("inf")))

    @staticmethod
    def backward(ctx, g):
        return g


class _ZeroNaNGrad(torch.autograd.Function):
    """Identity on coordinates whose backward turns NaN gradient components into 0.

    Only overflowing (float32) configurations can produce them; their energy is +inf.
    """

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return torch.nan_to_num(g, nan=0.0)


def as_batch(x, n_atoms: int) -> tuple[torch.Tensor, bool]:
    """Validated coordinates as a batch [B, N, 3] (nm), and whether the input was one [N, 3]."""
    single = getattr(x, "ndim", None) == 2
    x = check_coordinates(x, n_atoms)
    return (x.unsqueeze(0) if single else x), single


def check_coordinates(x, n_atoms: int) -> torch.Tensor:
    """Validate a coordinate tensor [B, N, 3] or [N, 3] (nm): shape, dtype, finiteness."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dim() not in (2, 3) or x.shape[-1] != 3 or x.shape[-2] != n_atoms:
        raise InvalidInputError(
            f"coordinates must have shape [B, {n_atoms}, 3] or [{n_atoms}, 3] (nm), "
            f"got {list(x.shape)}"
        )
    if not x.is_floating_point():
        raise InvalidInputError(f"coordinates must be float32 or float64, got {x.dtype}")
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        # numpy: torch's multi-threaded elementwise ops cost ~100x more on a busy 2-core CPU
        all_finite = bool(np.isfinite(x.detach().numpy()).all())
    else:
        all_finite = bool(torch.isfinite(x).all())
    if not all_finite:
        finite = torch.isfinite(x)
        bad = (~finite).nonzero()[0].tolist()
        what = "NaN" if bool(torch.isnan(x).any()) else "infinite values"
        where = f"configuration {bad[0]}, atom {bad[1]}" if x.dim() == 3 else f"atom {bad[0]}"
        raise InvalidInputError(f"coordinates contain {what} (first at {where})")
    return x


def read_pdb_topology(path):
    """OpenMM Topology from a PDB file, with a clear error for a missing or broken file."""

    from moltune.physics.peptide import read_pdb

    return read_pdb(path).topology


def regularize_energy(u_kjmol: torch.Tensor, cut_kjmol: float) -> torch.Tensor:
    """Energy for training: identity below ``cut_kjmol``, ``cut + log(1 + u - cut)`` above.

    Finite, monotone increasing and C1 (value and slope 1 match at the cut). +inf maps to
    ``cut + log(1 + finfo.max)`` (about cut + 709 in float64, cut + 89 in float32) with zero
    gradient -- the only place the gradient vanishes; NaN stays NaN (TorchEnergy never
    returns NaN).
    """
    cut = float(cut_kjmol)
    excess = (u_kjmol - cut).clamp(min=0.0)
    big = torch.finfo(u_kjmol.dtype).max
    excess = torch.nan_to_num(excess, nan=float("nan"), posinf=big).clamp(max=big)
    soft = cut + torch.log1p(excess)
    return torch.where(u_kjmol <= cut, u_kjmol, soft)
