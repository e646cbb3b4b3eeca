"""Benchmark: molecules per second generated on this CPU by the DiffSBDD-compatible model.

Random-weight checkpoint of the published layout (../shared/fixtures/diffsbdd), pocket of
complex 3RFM from ../shared/data/complexes (residues within 8 Å of the caffeine ligand: 286 heavy
atoms), fixed ligand size, one batch, 100 and 500 denoising steps. Prints wall-clock and process
CPU time, the thread count and the machine load (the machine may be shared).

The original DiffSBDD implementation is not installed here (it needs torch_scatter and an old
Lightning), so no side-by-side figure is given.

    python benchmarks/bench_sbdd_generate.py [--steps 100 500] [--batch-size 4] [--num-atoms 14]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared"
CKPT = SHARED / "fixtures" / "diffsbdd" / "random_crossdock_fullatom_cond.ckpt"
COMPLEX = SHARED / "data" / "complexes" / "3rfm"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--batch-size", type=int, default=4, help="samples per batch (= n samples)")
    ap.add_argument("--num-atoms", type=int, default=14, help="ligand heavy atoms per sample")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--complex", default=str(COMPLEX))
    args = ap.parse_args()

    from moltune.sbdd.data import pocket_from_pdb
    from moltune.sbdd.generate import generate
    from moltune.sbdd.model import LigandDiffusionModel

    torch.set_num_threads(args.threads)
    model = LigandDiffusionModel.from_checkpoint(CKPT)
    cplx = Path(args.complex)
    pocket = pocket_from_pdb(cplx / "protein.pdb", ref_ligand_sdf=cplx / "ligand.sdf")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"pocket {cplx.name}: {pocket.n_atoms} atoms ({pocket.n_residues} residues); "
          f"ligand {args.num_atoms} atoms; batch size {args.batch_size} "
          f"(= samples per run); float32")
    generate(model, pocket, 1, num_atoms=args.num_atoms, timesteps=2, progress=False)  # warm-up
    for steps in args.steps:
        load0 = os.getloadavg()[0]
        c0, w0 = time.process_time(), time.perf_counter()
        res = generate(model, pocket, args.batch_size, num_atoms=args.num_atoms, timesteps=steps,
                       batch_size=args.batch_size, seed=0, progress=False)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        n = len(res.ligands)
        print(f"timesteps {steps:4d}: {n / wall:.4f} molecules/s wall ({wall / n:.1f} s per "
              f"molecule, {wall:.1f} s total); CPU time {cpu:.1f} s ({n / cpu:.4f} molecules per "
              f"CPU-second); load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    print("original DiffSBDD implementation: not runnable here (no torch_scatter / old "
          "Lightning); figure stated alone")


if __name__ == "__main__":
    main()
