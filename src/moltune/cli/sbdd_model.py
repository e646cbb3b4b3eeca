"""CLI: ``moltune sbdd generate`` — sample ligands for a pocket from a DiffSBDD checkpoint."""

from __future__ import annotations

import argparse

from moltune.common.errors import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate ligands for a pocket with a DiffSBDD checkpoint (optionally FiLM-adapted)",
        description="Loads a DiffSBDD conditional full-atom checkpoint (weights-only), extracts "
        "the pocket (residues with any atom < 8 Å from the reference ligand, or the listed "
        "residues), samples ligands in batches and writes them to an SDF in the PDB frame.",
    )
    p.add_argument("checkpoint", help="DiffSBDD checkpoint (.ckpt)")
    p.add_argument("--pdb", required=True, help="protein PDB file")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--ref-ligand", help="reference ligand SDF that defines the pocket")
    g.add_argument("--resi-list", nargs="+", metavar="CHAIN:RESNUM",
                   help="pocket residues, e.g. A:12 A:13")
    p.add_argument("--n-samples", type=positive_int, required=True, help="number of ligands")
    p.add_argument("--out", required=True, help="output SDF")
    p.add_argument("--num-atoms", type=positive_int, default=None,
                   help="ligand size (default: drawn from the checkpoint's size distribution)")
    p.add_argument("--embedding", default=None,
                   help="pocket embedding for the FiLM adapter: deterministic, precomputed:DIR "
                   "or esmc:PATH (needed with --film-checkpoint or --film-init)")
    p.add_argument("--film-checkpoint", default=None,
                   help="adapter-only checkpoint written by moltune (FiLM adapter)")
    p.add_argument("--film-init", choices=("identity", "random"), default=None,
                   help="attach a fresh adapter (identity = exact no-op; random = control)")
    p.add_argument("--timesteps", type=positive_int, default=None,
                   help="denoising steps (default: the checkpoint's, 500)")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--batch-size", type=positive_int, default=16, help="samples per batch (default 16)")
    p.add_argument("--builder", choices=("rdkit", "openbabel"), default="rdkit",
                   help="bond perception for the SDF (default rdkit)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    import json

    import torch

    from moltune.common.errors import InvalidInputError, check_output_file, check_sdf_file
    from moltune.sbdd.data import pocket_from_pdb
    from moltune.sbdd.film import FiLMConfig, load_adapter
    from moltune.sbdd.generate import generate, write_sdf
    from moltune.sbdd.model import LigandDiffusionModel

    if args.film_checkpoint and args.film_init:
        raise InvalidInputError("give --film-checkpoint or --film-init, not both")
    check_output_file(args.out, inputs=(args.checkpoint, args.pdb, args.ref_ligand))
    if args.ref_ligand:
        check_sdf_file(args.ref_ligand, "reference ligand file")
    provider = None
    if args.embedding:  # a bad spec is refused before the checkpoint loads
        from moltune.sbdd.embeddings import make_provider

        provider = make_provider(args.embedding)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    model = LigandDiffusionModel.from_checkpoint(args.checkpoint)
    if args.film_checkpoint:
        model.set_film(load_adapter(args.film_checkpoint))
    elif args.film_init:
        model.set_film(FiLMConfig(joint_nf=model.joint_nf, init=args.film_init))
    pocket = pocket_from_pdb(args.pdb, ref_ligand_sdf=args.ref_ligand, resi_list=args.resi_list)
    embedding = None
    if model.film is not None:
        if provider is None:
            raise InvalidInputError("a FiLM adapter needs --embedding (e.g. deterministic)")
        embedding = provider.embed(pocket)
    elif args.embedding:
        raise InvalidInputError("--embedding given without a FiLM adapter "
                                "(--film-checkpoint or --film-init)")
    result = generate(model, pocket, args.n_samples, num_atoms=args.num_atoms,
                      timesteps=args.timesteps, batch_size=args.batch_size, seed=args.seed,
                      embedding=embedding, progress=not args.no_progress)
    counts = write_sdf(args.out, result.ligands, method=args.builder)
    print(json.dumps({
        "out": str(args.out), "n_samples": len(result.ligands), "pocket_atoms": pocket.n_atoms,
        "pocket_residues": pocket.n_residues, "num_atoms": result.num_atoms,
        "timesteps": result.timesteps, "seconds": round(result.seconds, 2),
        "molecules_per_second": round(len(result.ligands) / result.seconds, 4), **counts,
    }))
    return 0
