"""Compiled (numba) CPU kernel: the same energy as ``TorchEnergy``'s torch ops, with analytic forces.

Why: on a CPU a batch of small molecules is dominated by per-op overhead and memory traffic
when written as tensor ops; one compiled loop per configuration (parallel over the batch) is
~20x faster. Always evaluated in float64. Every formula mirrors ``TorchEnergy._energy`` /
``TorchEnergy._gb`` (OpenMM's functional forms); tests compare both against OpenMM.

Gradient bookkeeping per pair (i<j, d = x_j - x_i): terms depending on the floored distance r
contribute ``dU/dr * d/r`` (zero where the floor is active), the GB pair term depends on
r^2 directly and contributes ``2 dU/dr^2 * d``.
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
from numba import njit, prange

if "NUMBA_THREADING_LAYER" not in os.environ:
    # GNU OpenMP (numba's default here) aborts a forked child that uses the kernel; the
    # fork-safe layer does not (calls are serialised by a lock in moltune.physics.energy)
    numba.config.THREADING_LAYER = "forksafe"


@njit(cache=True, inline="always")
def _add3(g, b, a, s, vx, vy, vz):
    g[b, a, 0] += s * vx
    g[b, a, 1] += s * vy
    g[b, a, 2] += s * vz


CHUNK = 8  # configurations per parallel work item


@njit(parallel=True, cache=True, fastmath={"contract", "nsz"}, error_model="numpy")
def energy_forces(
    x, pi, pj, nb_qq, nb_a, nb_c, floor, eps_len,
    has_gb, gb_or, gb_sr, gb_rb, gb_self, gb_ace, gb_re, gb_pair,
    bidx, b_r0, b_k, aidx, a_th0, a_k, tidx, t_cos, t_sin, t_const, eps_dih,
    u_out, g_out,
):
    """u_out[b] = U(x[b]) (kJ/mol), g_out[b] = dU/dx[b] (kJ/mol/nm); x [B, N, 3] float64 nm."""
    B, N = x.shape[0], x.shape[1]
    P = pi.shape[0]
    n_chunks = (B + CHUNK - 1) // CHUNK
    for c in prange(n_chunks):
        r_arr = np.empty(P)
        r2_arr = np.empty(P)
        g_r = np.empty(P)  # dU/dr (floored-distance terms)
        g_r2 = np.empty(P)  # dU/dr^2 (GB pair term)
        integ = np.empty(N)
        dval_ij = np.empty(P)
        dval_ji = np.empty(P)
        born = np.empty(N)
        inv_born = np.empty(N)
        dborn = np.empty(N)  # dB/dI
        du_db = np.empty(N)
        for b in range(c * CHUNK, min(B, (c + 1) * CHUNK)):
            _one_configuration(
                x, b, pi, pj, nb_qq, nb_a, nb_c, floor, eps_len,
                has_gb, gb_or, gb_sr, gb_rb, gb_self, gb_ace, gb_re, gb_pair,
                bidx, b_r0, b_k, aidx, a_th0, a_k, tidx, t_cos, t_sin, t_const, eps_dih,
                u_out, g_out, r_arr, r2_arr, g_r, g_r2, integ, dval_ij, dval_ji, born, inv_born,
                dborn, du_db,
            )


@njit(cache=True, fastmath={"contract", "nsz"}, error_model="numpy")
def _one_configuration(
    x, b, pi, pj, nb_qq, nb_a, nb_c, floor, eps_len,
    has_gb, gb_or, gb_sr, gb_rb, gb_self, gb_ace, gb_re, gb_pair,
    bidx, b_r0, b_k, aidx, a_th0, a_k, tidx, t_cos, t_sin, t_const, eps_dih,
    u_out, g_out, r_arr, r2_arr, g_r, g_r2, integ, dval_ij, dval_ji, born, inv_born, dborn, du_db,
):
    N = x.shape[1]
    P = pi.shape[0]
    nmax = t_cos.shape[1]
    for a in range(N):
        g_out[b, a, 0] = 0.0
        g_out[b, a, 1] = 0.0
        g_out[b, a, 2] = 0.0
    u = 0.0
    # ---- pair distances, Coulomb + LJ
    for p in range(P):
        i, j = pi[p], pj[p]
        dx = x[b, j, 0] - x[b, i, 0]
        dy = x[b, j, 1] - x[b, i, 1]
        dz = x[b, j, 2] - x[b, i, 2]
        r2 = dx * dx + dy * dy + dz * dz
        r = math.sqrt(r2 + eps_len * eps_len)
        if r < floor:
            r = floor
            r_arr[p] = -floor  # marks a floored pair (no force along it)
        else:
            r_arr[p] = r
        r2_arr[p] = r2
        inv_r = 1.0 / r
        inv_r2 = inv_r * inv_r
        inv_r6 = inv_r2 * inv_r2 * inv_r2
        u += nb_qq[p] * inv_r + nb_a[p] * inv_r6 * inv_r6 - nb_c[p] * inv_r6
        g_r[p] = (-nb_qq[p] * inv_r - 12.0 * nb_a[p] * inv_r6 * inv_r6
                  + 6.0 * nb_c[p] * inv_r6) * inv_r
    if has_gb:
        for a in range(N):
            integ[a] = 0.0
        for p in range(P):
            dval_ij[p] = 0.0
            dval_ji[p] = 0.0
            g_r2[p] = 0.0
        # ---- OBC descreening integral, both orders of each pair
        for p in range(P):
            r = abs(r_arr[p])
            inv_r = 1.0 / r
            for order in range(2):
                if order == 0:
                    i, j = pi[p], pj[p]
                else:
                    i, j = pj[p], pi[p]
                o = gb_or[i]
                s = gb_sr[j]
                U = r + s
                if U < o:
                    continue
                if r - s > o:
                    # common case L = r - s: OpenMM's expression simplifies exactly to
                    # 0.5 * (s / (r^2 - s^2) + 0.5 * log((r - s) / (r + s)) / r)
                    q = 1.0 / ((r - s) * U)
                    lg = math.log((r - s) * (r - s) * q)
                    integ[i] += 0.5 * s * q + 0.25 * lg * inv_r
                    dv = -r * s * q * q + 0.5 * s * q * inv_r - 0.25 * lg * inv_r * inv_r
                else:
                    D = abs(r - s)
                    if D > o:
                        L = D
                        dL = 1.0 if r > s else -1.0
                    else:
                        L = o
                        dL = 0.0
                    iu = 1.0 / U
                    il = 1.0 / L
                    lg = math.log(L * iu)
                    t = r - s * s * inv_r
                    du2 = iu * iu - il * il
                    integ[i] += 0.5 * (il - iu + 0.25 * t * du2 + 0.5 * lg * inv_r)
                    dv = 0.5 * (
                        -dL * il * il + iu * iu
                        + 0.25 * (1.0 + s * s * inv_r * inv_r) * du2
                        + 0.25 * t * (-2.0 * iu * iu * iu + 2.0 * dL * il * il * il)
                        + 0.5 * ((dL * il - iu) * inv_r - lg * inv_r * inv_r)
                    )
                if order == 0:
                    dval_ij[p] = dv
                else:
                    dval_ji[p] = dv
        # ---- Born radii, self and ACE terms
        for a in range(N):
            o = gb_or[a]
            psi = integ[a] * o
            phi = psi - 0.8 * psi * psi + 4.85 * psi * psi * psi
            th = math.tanh(phi)
            bn = 1.0 / (1.0 / o - th / gb_rb[a])
            born[a] = bn
            inv_born[a] = 1.0 / bn
            dborn[a] = bn * bn * (1.0 - th * th) * (1.0 - 1.6 * psi + 14.55 * psi * psi) \
                * o / gb_rb[a]
            e_self = gb_self[a] / bn
            ratio = gb_re[a] / bn
            r3 = ratio * ratio * ratio
            e_ace = gb_ace[a] * r3 * r3
            u += e_self + e_ace
            du_db[a] = -(e_self + 6.0 * e_ace) / bn
        # ---- GB pair term
        for p in range(P):
            i, j = pi[p], pj[p]
            r2 = r2_arr[p]
            bb = born[i] * born[j]
            z = 0.25 * r2 * inv_born[i] * inv_born[j]
            e = math.exp(-z)
            f = math.sqrt(r2 + bb * e)
            inv_f = 1.0 / f
            ep = gb_pair[p] * inv_f
            u += ep
            de_df = -ep * inv_f
            g_r2[p] += de_df * (1.0 - 0.25 * e) * 0.5 * inv_f
            de_dbb = de_df * e * (1.0 + z) * 0.5 * inv_f
            du_db[i] += de_dbb * born[j]
            du_db[j] += de_dbb * born[i]
        for p in range(P):
            i, j = pi[p], pj[p]
            g_r[p] += du_db[i] * dborn[i] * dval_ij[p] + du_db[j] * dborn[j] * dval_ji[p]
    else:
        for p in range(P):
            g_r2[p] = 0.0
    # ---- pair forces
    for p in range(P):
        i, j = pi[p], pj[p]
        coef = 2.0 * g_r2[p]
        if r_arr[p] > 0.0:
            coef += g_r[p] / r_arr[p]
        dx = x[b, j, 0] - x[b, i, 0]
        dy = x[b, j, 1] - x[b, i, 1]
        dz = x[b, j, 2] - x[b, i, 2]
        _add3(g_out, b, j, coef, dx, dy, dz)
        _add3(g_out, b, i, -coef, dx, dy, dz)
    # ---- bonds
    for k in range(bidx.shape[0]):
        i, j = bidx[k, 0], bidx[k, 1]
        dx = x[b, j, 0] - x[b, i, 0]
        dy = x[b, j, 1] - x[b, i, 1]
        dz = x[b, j, 2] - x[b, i, 2]
        r = math.sqrt(dx * dx + dy * dy + dz * dz + eps_len * eps_len)
        dr = r - b_r0[k]
        u += 0.5 * b_k[k] * dr * dr
        coef = b_k[k] * dr / r
        _add3(g_out, b, j, coef, dx, dy, dz)
        _add3(g_out, b, i, -coef, dx, dy, dz)
    # ---- angles: theta = atan2(|a x c|, a . c), a = x_i - x_j, c = x_k - x_j
    for k in range(aidx.shape[0]):
        i, j, l = aidx[k, 0], aidx[k, 1], aidx[k, 2]
        ax = x[b, i, 0] - x[b, j, 0]
        ay = x[b, i, 1] - x[b, j, 1]
        az = x[b, i, 2] - x[b, j, 2]
        cx = x[b, l, 0] - x[b, j, 0]
        cy = x[b, l, 1] - x[b, j, 1]
        cz = x[b, l, 2] - x[b, j, 2]
        nx = ay * cz - az * cy
        ny = az * cx - ax * cz
        nz = ax * cy - ay * cx
        sn = math.sqrt(nx * nx + ny * ny + nz * nz + eps_len ** 4)
        cs = ax * cx + ay * cy + az * cz
        theta = math.atan2(sn, cs)
        dth = theta - a_th0[k]
        u += 0.5 * a_k[k] * dth * dth
        den = sn * sn + cs * cs
        de = a_k[k] * dth
        ds = de * cs / den / sn  # dE/ds / s
        dc = -de * sn / den
        # ds/da = (c x n)/s, ds/dc = (n x a)/s
        gax = ds * (cy * nz - cz * ny) + dc * cx
        gay = ds * (cz * nx - cx * nz) + dc * cy
        gaz = ds * (cx * ny - cy * nx) + dc * cz
        gcx = ds * (ny * az - nz * ay) + dc * ax
        gcy = ds * (nz * ax - nx * az) + dc * ay
        gcz = ds * (nx * ay - ny * ax) + dc * az
        _add3(g_out, b, i, 1.0, gax, gay, gaz)
        _add3(g_out, b, l, 1.0, gcx, gcy, gcz)
        _add3(g_out, b, j, -1.0, gax + gcx, gay + gcy, gaz + gcz)
    # ---- torsions
    u += t_const
    for k in range(tidx.shape[0]):
        i0, i1, i2, i3 = tidx[k, 0], tidx[k, 1], tidx[k, 2], tidx[k, 3]
        t1x = x[b, i1, 0] - x[b, i0, 0]
        t1y = x[b, i1, 1] - x[b, i0, 1]
        t1z = x[b, i1, 2] - x[b, i0, 2]
        t2x = x[b, i2, 0] - x[b, i1, 0]
        t2y = x[b, i2, 1] - x[b, i1, 1]
        t2z = x[b, i2, 2] - x[b, i1, 2]
        t3x = x[b, i3, 0] - x[b, i2, 0]
        t3y = x[b, i3, 1] - x[b, i2, 1]
        t3z = x[b, i3, 2] - x[b, i2, 2]
        m1x = t1y * t2z - t1z * t2y
        m1y = t1z * t2x - t1x * t2z
        m1z = t1x * t2y - t1y * t2x
        m2x = t2y * t3z - t2z * t3y
        m2y = t2z * t3x - t2x * t3z
        m2z = t2x * t3y - t2y * t3x
        b2 = math.sqrt(t2x * t2x + t2y * t2y + t2z * t2z + eps_len * eps_len)
        cxv = m1x * m2x + m1y * m2y + m1z * m2z
        t1n2 = t1x * m2x + t1y * m2y + t1z * m2z
        syv = b2 * t1n2
        rho2 = cxv * cxv + syv * syv + eps_dih
        rho = math.sqrt(rho2)
        c1 = cxv / rho
        s1 = syv / rho
        cn, sn_ = c1, s1
        de = 0.0
        for n in range(nmax):
            if n > 0:
                cn, sn_ = cn * c1 - sn_ * s1, sn_ * c1 + cn * s1
            u += t_cos[k, n] * cn + t_sin[k, n] * sn_
            de += (n + 1) * (t_sin[k, n] * cn - t_cos[k, n] * sn_)
        dcx = -de * syv / rho2  # dE/dcx
        dsy = de * cxv / rho2  # dE/dsy
        # d cx/dt1 = t2 x m2 ; d sy/dt1 = b2 m2
        g1x = dcx * (t2y * m2z - t2z * m2y) + dsy * b2 * m2x
        g1y = dcx * (t2z * m2x - t2x * m2z) + dsy * b2 * m2y
        g1z = dcx * (t2x * m2y - t2y * m2x) + dsy * b2 * m2z
        # d cx/dt3 = m1 x t2 ; d sy/dt3 = b2 m1
        g3x = dcx * (m1y * t2z - m1z * t2y) + dsy * b2 * m1x
        g3y = dcx * (m1z * t2x - m1x * t2z) + dsy * b2 * m1y
        g3z = dcx * (m1x * t2y - m1y * t2x) + dsy * b2 * m1z
        # d cx/dt2 = m2 x t1 + t3 x m1 ; d sy/dt2 = t2/b2 (t1.m2) + b2 (t3 x t1)
        g2x = dcx * ((m2y * t1z - m2z * t1y) + (t3y * m1z - t3z * m1y)) + dsy * (
            t2x / b2 * t1n2 + b2 * (t3y * t1z - t3z * t1y))
        g2y = dcx * ((m2z * t1x - m2x * t1z) + (t3z * m1x - t3x * m1z)) + dsy * (
            t2y / b2 * t1n2 + b2 * (t3z * t1x - t3x * t1z))
        g2z = dcx * ((m2x * t1y - m2y * t1x) + (t3x * m1y - t3y * m1x)) + dsy * (
            t2z / b2 * t1n2 + b2 * (t3x * t1y - t3y * t1x))
        _add3(g_out, b, i0, -1.0, g1x, g1y, g1z)
        _add3(g_out, b, i1, 1.0, g1x - g2x, g1y - g2y, g1z - g2z)
        _add3(g_out, b, i2, 1.0, g2x - g3x, g2y - g3y, g2z - g3z)
        _add3(g_out, b, i3, 1.0, g3x, g3y, g3z)
    # ---- defined results for overflow / undefined values
    if math.isnan(u) or u == -math.inf:
        u = math.inf
    u_out[b] = u
    for a in range(N):
        for c in range(3):
            v = g_out[b, a, c]
            if math.isnan(v):
                g_out[b, a, c] = 0.0


def kernel_arrays(module) -> tuple:
    """Contiguous float64/int64 numpy copies of a TorchEnergy's parameters, in kernel order."""
    n = module.n_atoms
    pi, pj = np.triu_indices(n, 1)

    def f64(name):  # a copy: tensor.numpy() would alias storage that torch may move/free
        return np.array(getattr(module, name).detach().cpu().double().numpy(), np.float64)

    if module.has_gb:
        screen = module.gb_inv_solute - module.gb_inv_solvent
        gb = (
            f64("gb_or"), f64("gb_sr"), f64("gb_radius_born"),
            screen * f64("gb_self_q2"),
            f64("gb_ace_coef") if module.gb_ace else np.zeros(n),
            f64("gb_radius_energy"), screen * f64("gb_pair_qq"),
        )
    else:
        z = np.zeros(n)
        gb = (z + 1.0, z, z + 1.0, z, z, z + 1.0, np.zeros(len(pi)))
    p = module._kernel_params
    return (
        pi.astype(np.int64), pj.astype(np.int64), f64("nb_qq"), f64("nb_a"), f64("nb_c"),
        float(module.pair_floor_nm), float(module.eps_len_nm), bool(module.has_gb), *gb,
        p["bond_idx"], f64("bond_r0"), f64("bond_k"), p["angle_idx"], f64("angle_theta0"),
        f64("angle_k"), p["tors_idx"], f64("tors_cos"), f64("tors_sin"),
        float(module.tors_const), float(module.eps_dihedral),
    )
