"""Shared fixtures for the physics tests.

Energy fixtures (prefix ``energy_``): peptides built with ``build_peptide``, short OpenMM
Langevin MD snapshots at 300/670/1000 K, strongly perturbed copies, and OpenMM Reference-platform
energies/forces for all of them (float64).
"""

from __future__ import annotations

import numpy as np
import pytest

# name -> (sequence, caps); the nine test systems of issue 2
ENERGY_PEPTIDES = {
    "AA": ("AA", False),
    "ACE-A-NME": ("A", True),
    "AK": ("AK", False),
    "AS": ("AS", False),
    "SA": ("SA", False),
    "SK": ("SK", False),
    "SS": ("SS", False),
    "KK": ("KK", False),
    "KS": ("KS", False),
}
ENERGY_MD_TEMPERATURES_K = (300.0, 670.0, 1000.0)
ENERGY_PERTURBATION_NM = (0.02, 0.04)  # Gaussian noise on every coordinate


def _md_snapshots(topology, system, x0, rng_seed: int, n_per_t: int = 2, steps: int = 150):
    """Langevin MD (1 fs, 1/ps, CPU platform) from x0: ``n_per_t`` frames per temperature."""
    import openmm

    frames = []
    for k, temperature in enumerate(ENERGY_MD_TEMPERATURES_K):
        integrator = openmm.LangevinMiddleIntegrator(temperature, 1.0, 0.001)
        integrator.setRandomNumberSeed(rng_seed + k)
        platform = openmm.Platform.getPlatformByName("CPU")
        ctx = openmm.Context(system, integrator, platform, {"Threads": "1"})
        ctx.setPositions(x0)
        ctx.setVelocitiesToTemperature(temperature, rng_seed + k)
        for _ in range(n_per_t):
            integrator.step(steps)
            frames.append(ctx.getState(getPositions=True).getPositions(asNumpy=True)._value)
        del ctx
    return np.asarray(frames, dtype=np.float64)


def build_energy_test_data(name: str, solvent: str = "obc2", peptide=None) -> dict:
    """Test configurations of peptide ``name`` and their OpenMM Reference energies/forces.

    Keys: ``topology``, ``system``, ``x`` [M, N, 3] nm (minimised structure, MD snapshots at
    300/670/1000 K, perturbed snapshots), ``labels`` (what each row is), ``u_ref`` [M] kJ/mol,
    ``f_ref`` [M, N, 3] kJ/mol/nm (OpenMM Reference platform, float64) and ``peptide``.
    """
    from moltune.physics.forcefield import create_system
    from moltune.physics.openmm_energy import OpenMMEnergy
    from moltune.physics.peptide import build_peptide

    if peptide is None:
        seq, caps = ENERGY_PEPTIDES[name]
        peptide = build_peptide(seq, caps=caps)
    system = create_system(peptide.topology, solvent=solvent)
    seed = 1 + list(ENERGY_PEPTIDES).index(name)
    md = _md_snapshots(peptide.topology, system, peptide.positions_nm, rng_seed=seed)
    rng = np.random.default_rng(seed)
    perturbed = [md + rng.normal(0.0, s, md.shape) for s in ENERGY_PERTURBATION_NM]
    x = np.concatenate([peptide.positions_nm[None], md, *perturbed])
    labels = (["minimised"]
              + [f"md {t:.0f} K" for t in ENERGY_MD_TEMPERATURES_K for _ in range(2)]
              + [f"md + N(0, {s} nm)" for s in ENERGY_PERTURBATION_NM for _ in md])
    u_ref, f_ref = OpenMMEnergy(system).energy_and_forces(x)
    return {"topology": peptide.topology, "system": system, "x": x, "labels": labels,
            "u_ref": u_ref, "f_ref": f_ref, "peptide": peptide}


@pytest.fixture(scope="session")
def energy_test_system():
    """Factory ``get(name, solvent="obc2") -> dict`` of :func:`build_energy_test_data` (cached)."""
    cache: dict = {}

    def get(name: str, solvent: str = "obc2") -> dict:
        if (name, solvent) not in cache:
            other = next((v for (n, _), v in cache.items() if n == name), None)
            cache[(name, solvent)] = build_energy_test_data(
                name, solvent, peptide=None if other is None else other["peptide"])
        return cache[(name, solvent)]

    return get


@pytest.fixture(scope="session")
def aa():
    """The AA zwitterion, built once (``build_peptide`` is deterministic, so every test sees the
    same atoms a fresh build would give)."""
    from moltune.physics.peptide import build_peptide

    return build_peptide("AA")
