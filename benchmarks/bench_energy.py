"""Benchmark: energies + forces of 4096 AA configurations, TorchEnergy vs OpenMM one at a time.

Run: ``python benchmarks/bench_energy.py [--n 4096] [--repeats 5]``.

- OpenMM reference: CPU platform, 1 thread (``Threads=1``), one ``setPositions`` + ``getState``
  (energy and forces) per configuration, as a sampler evaluating them one at a time would.
- TorchEnergy: the whole batch in one call, ``torch.set_num_threads(2)`` and 2 numba threads
  (its default CPU backend is the compiled kernel); the torch-ops backend is timed as well.

Both are timed in the same process, interleaved, best of ``--repeats`` rounds (wall clock; the
CPU time of each is printed too, since this machine is shared). Configurations: AA from the
minimised structure plus Gaussian noise (0.01 nm), float64.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def build_aa():
    try:
        from moltune.physics.peptide import build_peptide

        pep = build_peptide("AA")
        return pep.topology, np.asarray(pep.positions_nm, dtype=np.float64)
    except ImportError:  # pragma: no cover - before the peptide builder exists
        raise SystemExit("moltune.physics.peptide.build_peptide is required") from None


def time_call(fn, repeats):
    best_wall, best_cpu = np.inf, np.inf
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - w)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best_wall, best_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="batch size (configurations)")
    ap.add_argument("--n-openmm", type=int, default=1024, help="configurations timed for OpenMM")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch/numba threads")
    args = ap.parse_args()

    import openmm

    from moltune.physics.energy import TorchEnergy
    from moltune.physics.forcefield import create_system

    torch.set_num_threads(args.threads)
    try:
        import numba

        numba.set_num_threads(args.threads)
    except ImportError:
        pass
    topology, x0 = build_aa()
    rng = np.random.default_rng(0)
    xs = x0[None] + rng.normal(0.0, 0.01, (args.n, *x0.shape))
    xt = torch.from_numpy(xs)

    system = create_system(topology, solvent="obc2")
    platform = openmm.Platform.getPlatformByName("CPU")
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), platform, {"Threads": "1"})

    def openmm_loop():
        for x in xs[: args.n_openmm]:
            ctx.setPositions(x)
            st = ctx.getState(getEnergy=True, getForces=True)
            st.getPotentialEnergy()
            st.getForces(asNumpy=True)

    kernel = TorchEnergy.from_topology(topology, backend="kernel")
    ops = TorchEnergy.from_topology(topology, backend="ops")
    kernel.energy_and_forces(xt[:8])  # compile / load the kernel
    ops.energy_and_forces(xt[:8])

    def torch_kernel():
        kernel.energy_and_forces(xt)

    def torch_ops():  # slow on CPU: timed on the same subset as OpenMM
        ops.energy_and_forces(xt[: args.n_openmm], chunk_size=256)

    results = {"openmm": [np.inf, np.inf], "kernel": [np.inf, np.inf], "ops": [np.inf, np.inf]}
    for _ in range(args.repeats):  # interleave so that load from other processes hits all alike
        for name, fn, n in (("openmm", openmm_loop, args.n_openmm), ("kernel", torch_kernel, args.n),
                            ("ops", torch_ops, args.n_openmm)):
            wall, cpu = time_call(fn, 1)
            results[name][0] = min(results[name][0], wall / n)
            results[name][1] = min(results[name][1], cpu / n)

    rate = {k: 1.0 / v[0] for k, v in results.items()}
    print(f"AA ({x0.shape[0]} atoms), Amber14 + OBC2, float64, energies + forces")
    print(f"torch threads {torch.get_num_threads()}, OpenMM CPU platform Threads=1, "
          f"OpenMM {openmm.__version__}, torch {torch.__version__}")
    print(f"OpenMM CPU, one at a time : {rate['openmm']:10.0f} conf/s "
          f"({results['openmm'][1] * 1e6:.1f} us CPU time/conf)")
    print(f"TorchEnergy kernel, B={args.n}: {rate['kernel']:10.0f} conf/s "
          f"({results['kernel'][1] * 1e6:.1f} us CPU time/conf)")
    print(f"TorchEnergy ops,    B={args.n_openmm}: {rate['ops']:10.0f} conf/s "
          f"({results['ops'][1] * 1e6:.1f} us CPU time/conf)")
    cpu_ratio = results["openmm"][1] / results["kernel"][1]
    print(f"ratio kernel / OpenMM = {rate['kernel'] / rate['openmm']:.1f}x wall clock "
          f"(target >= 20x); per CPU-second {cpu_ratio:.1f}x; "
          f"ops / OpenMM = {rate['ops'] / rate['openmm']:.2f}x")
    if os.getloadavg()[0] > os.cpu_count():
        print(f"note: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores -- other "
              "processes share this CPU, wall-clock figures are pessimistic (the 2-thread "
              "kernel suffers most)")


if __name__ == "__main__":
    main()
