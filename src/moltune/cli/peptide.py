"""CLI: ``moltune peptide build SEQ --out FILE.pdb [--caps] [--solvent obc2|vacuum] [--no-minimize]``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("peptide", help="build peptides from their one-letter sequence")
    psub = p.add_subparsers(dest="peptide_command", metavar="PEPTIDE_COMMAND", required=True)
    b = psub.add_parser(
        "build",
        help="build a peptide with all hydrogens, minimised with Amber14 (+OBC2)",
        description="Build SEQ (one-letter codes of the 20 standard amino acids) with all "
        "hydrogens and minimise it. Zwitterionic termini (2-5 residues) by default; --caps gives "
        "ACE/NME caps (1-5 residues). Histidine is the HIE tautomer.",
    )
    b.add_argument("sequence", metavar="SEQ", help='one-letter sequence, e.g. "AA"')
    b.add_argument("--out", required=True, help="output PDB path")
    b.add_argument("--caps", action="store_true", help="ACE/NME caps instead of charged termini")
    b.add_argument("--solvent", default="obc2", choices=("obc2", "vacuum"))
    b.add_argument("--no-minimize", action="store_true", help="skip energy minimisation")
    b.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    from moltune.common.errors import check_output_file
    from moltune.physics.peptide import build_peptide, potential_energy

    check_output_file(args.out)
    pep = build_peptide(
        args.sequence, caps=args.caps, minimize=not args.no_minimize, solvent=args.solvent
    )
    pep.write_pdb(args.out)
    u = potential_energy(pep.topology, pep.positions_nm, args.solvent)
    print(f"{args.out}: {pep.n_atoms} atoms, U = {u:.2f} kJ/mol ({args.solvent})")
    return 0
