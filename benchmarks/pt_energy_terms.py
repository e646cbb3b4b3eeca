"""Mean potential energy per force term and temperature of PT runs, side by side.

A sampler that is exact for positions gives the same mean of every term as plain PT, within
errors. Stiff terms (bonds, angles) are where integrator artefacts show first: flow-PT with
Maxwell-Boltzmann velocities after each accepted swap sits about 1 kT high in bonds + angles at
1 fs (see ``moltune.physics.integrator``). Errors are standard errors over ``--blocks`` time
blocks of each run.

    python benchmarks/pt_energy_terms.py RUN [RUN ...] [--blocks 10] [--max-frames 5000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from moltune.physics.forcefield import create_system
from moltune.physics.ptdata import block_standard_error, load_pt_data


def term_energies(directory: str | Path, max_frames: int | None):
    """(force names, temperatures K, per temperature energies [F, n_terms] kJ/mol) of a PT run."""
    import openmm

    data = load_pt_data(directory)
    system = create_system(data.topology, data.metadata.get("solvent", "obc2"))  # force i: group i
    names = [type(f).__name__.replace("Force", "") for f in system.getForces()]
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))  # fmt: skip
    out = []
    for xyz in data.xyz_nm:  # one temperature: [F, N, 3] nm
        if max_frames and len(xyz) > max_frames:
            xyz = xyz[np.linspace(0, len(xyz) - 1, max_frames).round().astype(int)]
        e = np.empty((len(xyz), len(names)))
        for f, x in enumerate(xyz):
            ctx.setPositions(x)
            for g in range(len(names)):
                e[f, g] = ctx.getState(getEnergy=True, groups={g}).getPotentialEnergy()._value
        out.append(e)
    return names, [float(t) for t in data.temperatures_K], out


def block_mean(a: np.ndarray, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and block standard error of each column of [frames, terms]."""
    return a.mean(0), np.array([block_standard_error(col, n_blocks) for col in a.T])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--max-frames", type=int, default=5000)
    args = ap.parse_args()
    rows = {}
    for run in args.runs:
        names, temps, e = term_energies(run, args.max_frames)
        for k, t in enumerate(temps):
            rows[(run, t)] = (names, block_mean(e[k], args.blocks), len(e[k]))
    names = next(iter(rows.values()))[0]
    print("| run | T (K) | frames | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for (run, t), (_, (m, se), n) in sorted(rows.items(), key=lambda r: (r[0][1], r[0][0])):
        cells = " | ".join(f"{a:.2f} ± {b:.2f}" for a, b in zip(m, se))
        print(f"| {Path(run).name} | {t:g} | {n} | {cells} |")


if __name__ == "__main__":
    main()
