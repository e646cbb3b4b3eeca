"""Vina scores of the crystal (reference) ligands of a few shared complexes, and their cost.

For each complex: receptor preparation (crop to the box + Vina cutoff, PDBFixer hydrogens at
pH 7, meeko PDBQT), grid maps, then the reference ligand's score as given and after local
minimisation (kcal/mol), optionally a global re-docking. Prints one table row per complex.

    python benchmarks/dock_reference_ligands.py [--ids 3rfm 1uw6 ...] [--exhaustiveness 8]

Caveats (see ../shared/data/complexes/README.md): 1a3b is covalent and carries boron (Vina cannot
type B, so it is reported as skipped); 1h36 is a pocket-only receptor with a re-docked pose;
hydrogens and protonation differ between sources.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from moltune.sbdd import docking as dk

COMPLEXES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "complexes"
DEFAULT_IDS = ("3rfm", "1uw6", "2ha2", "1g9v", "4yhj", "2y4i", "1h36", "1a3b")


def _fmt(x: float) -> str:
    return f"{x:7.2f}" if math.isfinite(x) else "      -"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(COMPLEXES), help="folder of complexes")
    ap.add_argument("--ids", nargs="+", default=list(DEFAULT_IDS))
    ap.add_argument("--padding", type=float, default=4.0, help="box padding Å (default 4)")
    ap.add_argument("--exhaustiveness", type=int, default=0,
                    help="also re-dock with this exhaustiveness (default 0: no docking)")
    args = ap.parse_args()

    cfg = dk.DockingConfig(padding_A=args.padding, exhaustiveness=args.exhaustiveness)
    print(f"Vina {dk.versions()['vina']}, meeko {dk.versions()['meeko']}; box = ligand extent "
          f"+ 2 x {cfg.padding_A} Å; kcal/mol; times in s")
    header = (f"{'id':5s} {'heavy':>5s} {'rec.atoms':>9s} {'score':>7s} {'minim.':>7s} "
              f"{'docked':>7s} {'t_rec':>6s} {'t_maps+score':>12s} {'t_lig':>6s}  status / notes")
    print(header)
    print("-" * len(header))
    for pid in args.ids:
        folder = Path(args.data) / pid
        ref = dk.read_reference_ligand(folder / "ligand.sdf")
        box = dk.box_around_ligand(ref, cfg.padding_A)
        t0 = time.perf_counter()
        receptor = dk.prepare_receptor(folder / "protein.pdb", box, cfg)
        t_rec = time.perf_counter() - t0
        t0 = time.perf_counter()
        (r,) = dk.score_molecules([ref], receptor, box, cfg, progress=False)
        t_score = time.perf_counter() - t0
        notes = [r.status] + ([r.message] if r.message else [])
        if receptor.dropped_residues:
            notes.append(f"dropped {len(receptor.dropped_residues)} residue(s)")
        if receptor.removed_heterogens:
            notes.append("removed " + ",".join(receptor.removed_heterogens))
        if receptor.metals_kept:
            notes.append("metals " + ",".join(receptor.metals_kept))
        print(f"{pid:5s} {ref.GetNumHeavyAtoms():5d} {receptor.n_atoms:9d} "
              f"{_fmt(r.score_only_kcalmol)} {_fmt(r.minimized_kcalmol)} {_fmt(r.docked_kcalmol)} "
              f"{t_rec:6.1f} {t_score:12.1f} {r.seconds:6.2f}  {'; '.join(notes)}")


if __name__ == "__main__":
    main()
