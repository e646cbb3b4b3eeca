"""CLI: ``moltune sbdd dock`` — AutoDock Vina scores of molecules in their pocket."""

from __future__ import annotations

import argparse

from moltune.common.errors import nonnegative_float, nonnegative_int, number, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dock",
        help="Vina scores (score-only and locally minimised, kcal/mol) of molecules in a pocket",
        description="Receptor hydrogens by PDBFixer at --ph, PDBQT by meeko; ligands get RDKit "
        "hydrogens and meeko PDBQT. Box centred on the reference ligand, edge = its heavy-atom "
        "extent + 2 x padding. Writes a CSV per molecule (index, smiles, score_only_kcalmol, "
        "minimized_kcalmol, docked_kcalmol, status, message, n_heavy_atoms, seconds) and a JSON "
        "summary beside it. Molecules that cannot be prepared are listed with the reason.",
    )
    p.add_argument("ligands", help="molecules to score (SDF, poses in the protein's frame)")
    p.add_argument("--pdb", required=True, help="protein PDB")
    p.add_argument("--ref-ligand", required=True, help="reference ligand SDF (defines the box)")
    p.add_argument("--out", default="scores.csv", help="per-molecule CSV (default scores.csv)")
    p.add_argument("--summary", help="summary JSON (default: <out stem>.json)")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes (default 1)")
    p.add_argument("--exhaustiveness", type=nonnegative_int, default=0,
                   help="also dock each molecule globally with this Vina exhaustiveness "
                   "(default 0: no docking, only score-only and minimised)")
    p.add_argument("--padding", type=nonnegative_float, default=4.0,
                   help="Å added on each side of the reference ligand's extent (default 4)")
    p.add_argument("--spacing", type=number(float, above=0, maximum=2.0), default=0.375,
                   help="grid spacing Å, in (0, 2] (default 0.375)")
    p.add_argument("--scoring", choices=("vina", "vinardo"), default="vina")
    p.add_argument("--ph", type=number(float, minimum=0, maximum=14), default=7.0,
                   help="pH of receptor hydrogens, 0-14 (default 7)")
    p.add_argument("--seed", type=int, default=0, help="Vina seed for docking (default 0)")
    p.add_argument("--receptor-out", help="also write the prepared receptor PDBQT here")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_dock)


def _dock(args: argparse.Namespace) -> int:
    import time

    from moltune.common.errors import check_output_file, check_pdb_file
    from moltune.common.io import write_json
    from moltune.sbdd import docking as dk

    inputs = (args.ligands, args.pdb, args.ref_ligand)
    out = check_output_file(args.out, inputs=inputs)
    summary_path = check_output_file(args.summary or out.with_suffix(".json"), "--summary",
                                     inputs=(*inputs, out))
    if args.receptor_out:
        check_output_file(args.receptor_out, "--receptor-out", inputs=(*inputs, out, summary_path))
    check_pdb_file(args.pdb, "protein file")
    t0 = time.perf_counter()
    cfg = dk.DockingConfig(
        padding_A=args.padding, spacing_A=args.spacing, scoring=args.scoring,
        exhaustiveness=args.exhaustiveness, seed=args.seed, ph=args.ph,
    )
    mols = dk.read_ligands(args.ligands)
    ref = dk.read_reference_ligand(args.ref_ligand)
    box = dk.box_around_ligand(ref, cfg.padding_A)
    receptor = dk.prepare_receptor(args.pdb, box, cfg)
    for note in receptor.notes:
        print(f"receptor: {note}")
    if args.receptor_out:
        receptor.write(args.receptor_out)
    results = dk.score_molecules(
        mols, receptor, box, cfg, n_workers=args.workers, progress=not args.no_progress
    )
    dk.write_results_csv(out, results)
    summary = {
        "ligands": str(args.ligands),
        "protein": str(args.pdb),
        "ref_ligand": str(args.ref_ligand),
        "box": {"center_A": box.center_A, "size_A": box.size_A},
        "config": vars(cfg) | {"n_workers": args.workers},
        "receptor": receptor.info(),
        "units": "kcal/mol (Vina estimated free energy of binding)",
        "seconds": time.perf_counter() - t0,
        "versions": dk.versions(),
        **dk.summarize(results),
    }
    write_json(summary_path, summary)
    n_ok = summary["n_ok"]
    print(f"scored {n_ok}/{len(results)} molecules "
          f"(skipped {summary['n_skipped']}, outside box {summary['n_outside_box']}, "
          f"errors {summary['n_error']}); wrote {out} and {summary_path}")
    for r in results:
        if r.status != dk.STATUS_OK:
            print(f"  molecule {r.index}: {r.status}: {r.message}")
    if summary["minimized_kcalmol"]:
        s = summary["minimized_kcalmol"]
        print(f"minimised: median {s['median']:.2f}, best {s['min']:.2f} kcal/mol")
    return 0 if n_ok > 0 else 1
