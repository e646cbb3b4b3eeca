"""TorchEnergy equals OpenMM (Amber14 + OBC2 / vacuum) on real peptides; defined extreme results.

Reference: OpenMM Reference platform (float64) on the minimised structure, MD snapshots at
300/670/1000 K and strongly perturbed snapshots (Gaussian noise 0.02 and 0.04 nm per coordinate).
Float64 requirement: max |dU| <= 1e-3 kJ/mol, every force component within 1e-2 kJ/mol/nm.
"""

from __future__ import annotations

import numpy as np
import openmm
import pytest
import torch

from moltune.common.errors import InvalidInputError
from moltune.physics.energy import TorchEnergy, regularize_energy

U_TOL_F64 = 1e-3  # kJ/mol
F_TOL_F64 = 1e-2  # kJ/mol/nm
# float32 (measured; see test_float32_tolerance): |dU| <= 2e-2 kJ/mol + 1e-5 |U| for the ops
# backend; forces |dF| <= 1e-3 * max|F_ref| + 0.5 kJ/mol/nm
U_TOL_F32_ABS, U_TOL_F32_REL = 2e-2, 1e-5
F_TOL_F32_REL, F_TOL_F32_ABS = 1e-3, 0.5

DEFAULT_PEPTIDES = ("AA", "ACE-A-NME", "KS")
SLOW_PEPTIDES = ("AK", "AS", "SA", "SK", "SS", "KK")


def _torch_energy_forces(model, x, dtype=torch.float64):
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    u = model(xt)
    (g,) = torch.autograd.grad(u.sum(), xt)
    return u.detach().double().numpy(), -g.double().numpy()


def _check_float64(data, solvent_label=""):
    for backend in ("kernel", "ops"):
        model = TorchEnergy.from_system(data["system"], backend=backend)
        u, f = _torch_energy_forces(model, data["x"])
        du = np.abs(u - data["u_ref"])
        df = np.abs(f - data["f_ref"]).max(axis=(1, 2))
        worst = int(np.argmax(du))
        assert du.max() <= U_TOL_F64, (backend, solvent_label, data["labels"][worst], du.max())
        assert df.max() <= F_TOL_F64, (backend, solvent_label, df.max())
    # the set must contain genuinely high-energy configurations, not just the minimum
    assert data["u_ref"].max() - data["u_ref"].min() > 1e3


@pytest.mark.parametrize("name", DEFAULT_PEPTIDES)
def test_matches_openmm_float64(energy_test_system, name):
    _check_float64(energy_test_system(name), "obc2")


def test_matches_openmm_float64_vacuum(energy_test_system):
    data = energy_test_system("AA", "vacuum")
    _check_float64(data, "vacuum")
    # vacuum and obc2 differ by the GB term (sanity: we really compared two different systems)
    assert abs(data["u_ref"][0] - energy_test_system("AA")["u_ref"][0]) > 50.0


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_PEPTIDES)
def test_matches_openmm_float64_all_peptides(energy_test_system, name):
    _check_float64(energy_test_system(name), "obc2")


@pytest.mark.slow
@pytest.mark.parametrize("name", ("ACE-A-NME", "KS", "SS"))
def test_matches_openmm_float64_vacuum_more(energy_test_system, name):
    _check_float64(energy_test_system(name, "vacuum"), "vacuum")


@pytest.mark.parametrize("name", ("AA", "KS"))
def test_float32_tolerance(energy_test_system, name):
    data = energy_test_system(name)
    fmax = np.abs(data["f_ref"]).max(axis=(1, 2), keepdims=True)
    for backend in ("kernel", "ops"):
        model = TorchEnergy.from_system(data["system"], backend=backend).to(torch.float32)
        u, f = _torch_energy_forces(model, data["x"], torch.float32)
        du = np.abs(u - data["u_ref"])
        assert np.all(du <= U_TOL_F32_ABS + U_TOL_F32_REL * np.abs(data["u_ref"])), (
            backend, du.max())
        assert np.all(np.abs(f - data["f_ref"]) <= F_TOL_F32_REL * fmax + F_TOL_F32_ABS), backend


def test_torsion_phase_and_sign_match_openmm():
    """Non-trivial phases (sin terms) and periodicities 1-4 fix the dihedral's sign convention."""
    system = openmm.System()
    for _ in range(5):
        system.addParticle(12.0)
    tors = openmm.PeriodicTorsionForce()
    tors.addTorsion(0, 1, 2, 3, 1, 0.7, 3.0)
    tors.addTorsion(0, 1, 2, 3, 2, -1.1, 2.0)
    tors.addTorsion(1, 2, 3, 4, 3, 2.5, 1.5)
    tors.addTorsion(1, 2, 3, 4, 4, 0.3, 0.8)
    system.addForce(tors)
    angles = openmm.HarmonicAngleForce()
    angles.addAngle(0, 1, 2, 1.9, 300.0)
    system.addForce(angles)
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 0.15, (16, 5, 3))
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    u_ref, f_ref = [], []
    for xi in x:
        ctx.setPositions(xi)
        st = ctx.getState(getEnergy=True, getForces=True)
        u_ref.append(st.getPotentialEnergy()._value)
        f_ref.append(st.getForces(asNumpy=True)._value)
    for backend in ("kernel", "ops"):
        u, f = _torch_energy_forces(TorchEnergy.from_system(system, backend=backend), x)
        np.testing.assert_allclose(u, u_ref, atol=1e-9)
        np.testing.assert_allclose(f, np.array(f_ref), atol=1e-7)


def test_kernel_and_ops_agree_on_random_far_from_equilibrium(energy_test_system):
    data = energy_test_system("AA")
    rng = np.random.default_rng(7)
    x = data["x"][1:3] + rng.normal(0, 0.1, (2, *data["x"].shape[1:]))
    uk, fk = _torch_energy_forces(TorchEnergy.from_system(data["system"], backend="kernel"), x)
    uo, fo = _torch_energy_forces(TorchEnergy.from_system(data["system"], backend="ops"), x)
    np.testing.assert_allclose(uk, uo, rtol=1e-10)
    np.testing.assert_allclose(fk, fo, rtol=1e-8, atol=1e-6 * np.abs(fo).max())


# ---------------------------------------------------------------- extreme inputs
def _extreme_configurations(x0: np.ndarray) -> dict[str, np.ndarray]:
    far = x0.copy()
    far[5] += 1e6
    scattered = x0 * 1e6
    overlap_pair = x0.copy()
    overlap_pair[-1] = overlap_pair[0]  # two atoms far apart in the bond graph
    all_overlap = x0.copy()
    all_overlap[:] = x0[0]  # every atom on one point
    collinear = x0.copy()
    collinear[:, 1:] = 0.0
    collinear[:, 0] = np.linspace(0.0, 1.0, len(x0))  # all atoms on a line
    near = x0.copy()
    near[-2] = near[0] + 1e-7
    return {"1e6 nm away": far, "all 1e6 apart": scattered, "overlap pair": overlap_pair,
            "all overlapping": all_overlap, "collinear": collinear, "1e-7 nm pair": near}


@pytest.mark.parametrize("backend", ("kernel", "ops"))
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
def test_extreme_inputs_give_finite_or_inf_never_nan(energy_test_system, backend, dtype):
    data = energy_test_system("AA")
    model = TorchEnergy.from_system(data["system"], backend=backend).to(dtype)
    cases = _extreme_configurations(data["x"][0])
    x = torch.tensor(np.stack(list(cases.values())), dtype=dtype, requires_grad=True)
    u = model(x)
    (g,) = torch.autograd.grad(u.sum(), x)
    for k, name in enumerate(cases):
        assert not torch.isnan(u[k]), (name, backend, dtype)
        assert torch.isfinite(u[k]) or u[k] == float("inf"), (name, u[k])
        assert not torch.isnan(g[k]).any(), (name, backend, dtype)
    if dtype == torch.float64:  # float64: every case is finite, and overlaps cost energy
        assert torch.isfinite(u).all()
        assert torch.isfinite(g).all()
        minimum = model(torch.tensor(data["x"][0], dtype=dtype))
        for name in ("overlap pair", "all overlapping", "1e-7 nm pair"):
            assert u[list(cases).index(name)] > minimum + 1e6, name
        # one atom 1e6 nm away: its bond is stretched by ~1e6 nm -> ~k/2 * 1e12 kJ/mol
        assert 1e15 < u[0] < 1e19


def test_nan_and_inf_inputs_raise(energy_test_system):
    data = energy_test_system("AA")
    model = TorchEnergy.from_system(data["system"])
    x = torch.tensor(data["x"][:2])
    x[1, 4, 2] = float("nan")
    with pytest.raises(InvalidInputError, match=r"NaN.*configuration 1, atom 4"):
        model(x)
    x[1, 4, 2] = float("inf")
    with pytest.raises(InvalidInputError, match="infinite"):
        model(x)
    with pytest.raises(InvalidInputError, match=r"shape \[B, 23, 3\]"):
        model(torch.zeros(2, 22, 3, dtype=torch.float64))


def test_single_configuration_shape_dtype_and_to(energy_test_system):
    data = energy_test_system("AA")
    model = TorchEnergy.from_system(data["system"])
    u = model(torch.tensor(data["x"][0]))
    assert u.shape == () and u.dtype == torch.float64
    assert abs(u.item() - data["u_ref"][0]) < U_TOL_F64
    m32 = model.to(torch.float32)
    assert m32.nb_qq.dtype == torch.float32 and m32.diff_matrix.dtype == torch.float32
    u32 = m32(torch.tensor(data["x"][:3], dtype=torch.float32))
    assert u32.dtype == torch.float32 and u32.shape == (3,)
    # state_dict round trip keeps the buffers
    fresh = TorchEnergy.from_system(data["system"])
    fresh.load_state_dict(model.to(torch.float64).state_dict())
    assert abs(fresh(torch.tensor(data["x"][0])).item() - data["u_ref"][0]) < U_TOL_F64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_openmm(energy_test_system):  # pragma: no cover - no GPU in CI
    data = energy_test_system("AA")
    model = TorchEnergy.from_system(data["system"]).to("cuda")
    x = torch.tensor(data["x"], device="cuda", requires_grad=True)
    u = model(x)
    (g,) = torch.autograd.grad(u.sum(), x)
    assert np.abs(u.detach().cpu().numpy() - data["u_ref"]).max() <= U_TOL_F64
    assert np.abs(-g.cpu().numpy() - data["f_ref"]).max() <= F_TOL_F64


def test_ops_backend_supports_second_derivatives(energy_test_system):
    """Hessian-vector product by double backward equals a finite difference of the gradient."""
    data = energy_test_system("AA")
    model = TorchEnergy.from_system(data["system"], backend="ops")
    x = torch.tensor(data["x"][1:3], requires_grad=True)
    v = torch.randn_like(x, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), x)
    h = 1e-6

    def grad_at(y):
        y = y.detach().requires_grad_(True)
        return torch.autograd.grad(model(y).sum(), y)[0]

    fd = (grad_at(x + h * v) - grad_at(x - h * v)) / (2 * h)
    assert torch.allclose(hv, fd, rtol=1e-4, atol=1e-3 * fd.abs().max().item())
    kernel = TorchEnergy.from_system(data["system"], backend="kernel")
    (gk,) = torch.autograd.grad(kernel(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad((gk * v).sum(), x)


def test_unsupported_force_is_refused():
    system = openmm.System()
    system.addParticle(1.0)
    system.addParticle(1.0)
    bond = openmm.CustomBondForce("r^2")
    bond.addBond(0, 1)
    system.addForce(bond)
    with pytest.raises(NotImplementedError, match="CustomBondForce"):
        TorchEnergy.from_system(system)


# ---------------------------------------------------------------- regularised energy
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
def test_regularize_energy_properties(dtype):
    cut = 100.0
    u = torch.tensor([-1e4, -5.0, 0.0, 99.0, 100.0, 101.0, 1e3, 1e8, 1e30, float("inf")],
                     dtype=dtype, requires_grad=True)
    r = regularize_energy(u, cut)
    (g,) = torch.autograd.grad(r.sum(), u)
    assert torch.isfinite(r).all() and torch.isfinite(g).all()
    below = u <= cut
    assert torch.equal(r[below], u[below])  # identity below the cut
    assert torch.all(r[1:] >= r[:-1])  # monotone
    assert torch.all(r[:-1][~below[:-1]] < u[:-1][~below[:-1]] + 1e-6)  # never above u
    assert torch.allclose(g[below], torch.ones_like(g[below]))
    assert abs(r[6].item() - (cut + np.log1p(900.0))) < 1e-4  # logarithmic above
    assert torch.isnan(regularize_energy(torch.tensor([float("nan")], dtype=dtype), cut)).all()
    assert g[-1] == 0.0 and torch.all(g[:-1] > 0)  # zero slope only at +inf
    # C1 at the cut: left and right slopes both 1
    eps = 1e-3 if dtype == torch.float64 else 1e-2
    x = torch.tensor([cut - eps, cut, cut + eps], dtype=torch.float64)
    y = regularize_energy(x, cut)
    assert abs((y[1] - y[0]) / eps - 1.0) < 1e-6
    assert abs((y[2] - y[1]) / eps - 1.0) < 1e-2


def _energy_in_child(args):
    model, x = args
    return model(torch.tensor(x)).numpy()


def test_kernel_works_in_forked_children_and_threads(energy_test_system):
    """The CPU kernel's thread pool survives fork (PT / data-loader workers) and threads."""
    import multiprocessing as mp
    from concurrent.futures import ThreadPoolExecutor

    data = energy_test_system("AA")
    model = TorchEnergy.from_system(data["system"], backend="kernel")
    x = data["x"][:4]
    parent = model(torch.tensor(x)).numpy()  # the pool is running before the fork
    with mp.get_context("fork").Pool(1) as pool:
        (child,) = pool.map(_energy_in_child, [(model, x)])
    np.testing.assert_array_equal(child, parent)
    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(lambda _: model(torch.tensor(x)).numpy(), range(4)))
    for r in results:
        np.testing.assert_array_equal(r, parent)
