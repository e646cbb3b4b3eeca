"""The force field every energy in moltune comes from.

Default: Amber14 (``amber14-all.xml``) with OBC2 implicit solvent (``implicit/obc2.xml``), no
cutoff, no constraints (X-H bonds keep their bond terms), no rigid water. ``solvent="vacuum"``
drops the GB term. Energies in kJ/mol, coordinates in nm.
"""

from __future__ import annotations

from typing import Literal

import openmm
from openmm import app

Solvent = Literal["obc2", "vacuum"]
SOLVENTS: tuple[str, ...] = ("obc2", "vacuum")
DEFAULT_FORCEFIELD = "amber14-all.xml"
SOLVENT_FILES = {"obc2": ["implicit/obc2.xml"], "vacuum": []}


def forcefield(solvent: Solvent = "obc2") -> app.ForceField:
    """OpenMM ``ForceField`` for ``solvent`` (``obc2`` or ``vacuum``)."""
    if solvent not in SOLVENT_FILES:
        from moltune.common.errors import InvalidInputError

        raise InvalidInputError(f"unknown solvent {solvent!r}; choose one of {SOLVENTS}")
    return app.ForceField(DEFAULT_FORCEFIELD, *SOLVENT_FILES[solvent])


def create_system(topology: app.Topology, solvent: Solvent = "obc2") -> openmm.System:
    """OpenMM ``System`` for ``topology``: no cutoff, no constraints, flexible everything.

    Each force is put in its own force group (group = index) so per-term energies can be compared.
    """
    try:
        system = forcefield(solvent).createSystem(
            topology,
            nonbondedMethod=app.NoCutoff,
            constraints=None,
            rigidWater=False,
            removeCMMotion=False,
        )
    except ValueError as exc:  # OpenMM: no template for a residue, missing atoms, ...
        from moltune.common.errors import InvalidInputError

        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInputError(f"{DEFAULT_FORCEFIELD} cannot describe this molecule: {first}") from exc
    for i, force in enumerate(system.getForces()):
        force.setForceGroup(i)
    return system
