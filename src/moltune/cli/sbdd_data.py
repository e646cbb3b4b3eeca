"""CLI: ``moltune sbdd process`` (complexes -> DiffSBDD data) and ``moltune sbdd evaluate``
(chemistry metrics and PoseBusters checks of generated molecules)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "process",
        help="turn a folder of complexes (ID/protein.pdb + ID/ligand.sdf) into DiffSBDD npz data",
        description="Pocket = standard residues with any atom < CUTOFF Å from a ligand heavy atom "
        "(heavy atoms kept, 10-element one-hot). Writes train/val/test.npz (DiffSBDD keys), "
        "embeddings/ID.npy, val|test/ID.{pdb,sdf,txt}, train_smiles.npy, size_distribution.npy, "
        "split.json (split by protein), skipped.json (every complex left out, with the reason) "
        "and summary.json.",
    )
    p.add_argument("--data", required=True, help="folder of complexes")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--embedding", default="deterministic",
                   help="pocket embedding: deterministic (offline stand-in), precomputed:DIR, "
                   "esmc:PATH, or none (default: deterministic)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="fraction of complexes for validation, whole protein groups, at least 2 "
                   "(default 0.2)")
    p.add_argument("--test-fraction", type=float, default=0.0, help="fraction for test (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the group shuffle (default 0)")
    p.add_argument("--val-ids", nargs="+", metavar="ID",
                   help="explicit validation complexes (the rest train; --val/test-fraction and "
                   "--seed are then unused); refused if it separates a protein group")
    p.add_argument("--cutoff", type=float, default=8.0, help="pocket cutoff in Å (default 8)")
    p.add_argument("--min-identity", type=float, default=0.4,
                   help="sequence identity that puts two proteins in one group (default 0.4)")
    p.add_argument("--min-contact-fraction", type=float, default=0.5,
                   help="skip a complex when fewer ligand heavy atoms than this lie within 5 Å "
                   "of the pocket (default 0.5)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_process)

    e = sub.add_parser(
        "evaluate",
        help="chemistry metrics (validity, connectivity, QED, SA, logP, Lipinski, diversity, "
        "novelty) and PoseBusters checks of molecules in an SDF",
        description="Writes metrics.json (summary), a per-molecule CSV beside it "
        "(<out stem>_per_molecule.csv) and a PNG of the property distributions.",
    )
    e.add_argument("sdf", help="generated molecules (SDF)")
    e.add_argument("--pdb", help="protein PDB for PoseBusters' pose checks")
    e.add_argument("--ref-ligand", help="reference ligand SDF (its metrics are reported too)")
    e.add_argument("--train-smiles", help="training SMILES (.npy, .txt/.smi or .csv) for novelty")
    e.add_argument("--no-posebusters", action="store_true", help="skip PoseBusters")
    e.add_argument("--out", default="metrics.json", help="summary JSON (default metrics.json)")
    e.set_defaults(func=_evaluate)


def _process(args: argparse.Namespace) -> int:
    from moltune.sbdd.data import process_complexes

    embedding = None if str(args.embedding).lower() == "none" else args.embedding
    split = {i: "val" for i in args.val_ids} if args.val_ids else None
    summary = process_complexes(
        args.data, args.out, split, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        seed=args.seed, embedding=embedding, cutoff_A=args.cutoff,
        min_contact_fraction=args.min_contact_fraction, min_identity=args.min_identity,
        progress=not args.no_progress,
    )
    sizes = {k: len(v) for k, v in summary["splits"].items()}
    print(f"processed {summary['n_processed']} complexes ({sizes}); "
          f"skipped {summary['n_skipped']} (reasons in {Path(args.out) / 'skipped.json'})")
    for s in summary["skipped"]:
        print(f"  skipped {s['id']}: {s['reason']}")
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("qed", "QED"), ("sa", "SA (normalised, 1 = easy)"), ("logp", "logP"),
            ("lipinski", "Lipinski rules passed")]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, (k, label) in zip(axes, keys):
        vals = [r[k] for r in rows if r.get(k) is not None and r.get("connected")]
        if vals:
            bins = [x - 0.5 for x in range(7)] if k == "lipinski" else 20
            ax.hist(vals, bins=bins, color="tab:blue", alpha=0.8, rwidth=0.9)
        ax.set_xlabel(label)
        ax.set_ylabel("molecules")
    n_valid = sum(bool(r.get("valid")) for r in rows)
    fig.suptitle(f"{len(rows)} molecules, {n_valid} valid (valid and connected shown)")
    fig.tight_layout()
    from moltune.common.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from moltune.common.errors import check_output_file, check_pdb_file, check_sdf_file
    from moltune.common.io import atomic_path, write_json
    from moltune.sbdd.chemistry import evaluate_sdf, read_smiles_file

    inputs = (args.sdf, args.pdb, args.ref_ligand, args.train_smiles)
    out = check_output_file(args.out, inputs=inputs)
    for extra in ("_per_molecule.csv", "_properties.png"):
        check_output_file(out.with_name(out.stem + extra), "--out", inputs=inputs)
    check_sdf_file(args.sdf, "molecule file")
    if args.ref_ligand:
        check_sdf_file(args.ref_ligand, "reference ligand file")
    if args.pdb:
        check_pdb_file(args.pdb, "protein file")
    train = read_smiles_file(args.train_smiles) if args.train_smiles else None
    summary, rows = evaluate_sdf(
        args.sdf, pdb_path=args.pdb, ref_ligand_sdf=args.ref_ligand, train_smiles=train,
        posebusters=not args.no_posebusters,
    )
    csv_path = out.with_name(out.stem + "_per_molecule.csv")
    png_path = out.with_name(out.stem + "_properties.png")
    summary["per_molecule_csv"] = str(csv_path)
    write_json(out, summary)
    with atomic_path(csv_path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    _plot(rows, png_path)

    def fmt(x: object) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    print(f"{summary['n_molecules']} molecules: validity {fmt(summary['validity'])}, "
          f"connectivity {fmt(summary['connectivity'])}, QED {fmt(summary['qed'])}, "
          f"SA {fmt(summary['sa'])}, logP {fmt(summary['logp'])}, "
          f"Lipinski {fmt(summary['lipinski'])}, diversity {fmt(summary.get('diversity'))}"
          + (f", novelty {fmt(summary['novelty'])}" if summary.get("novelty") is not None else "")
          + (f", PoseBusters-valid {fmt(summary['posebusters_valid'])}"
             if summary.get("posebusters_valid") is not None else ""))
    print(f"wrote {out}, {csv_path}, {png_path}")
    return 0
