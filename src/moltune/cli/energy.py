"""CLI: ``moltune energy`` -- potential energies (and forces) of coordinates for a PDB molecule."""

from __future__ import annotations

import argparse

from moltune.common.errors import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "energy",
        help="energies (kJ/mol) and forces of coordinates (nm) with Amber14 (+OBC2)",
        description=(
            "Potential energy U in kJ/mol of every configuration in X.npy (nm, shape [B, N, 3] "
            "or [N, 3]) for the molecule in FILE.pdb, with Amber14 and OBC2 implicit solvent "
            "(or vacuum). Writes U.npy ([B] or []) and optionally forces F.npy (kJ/mol/nm, same "
            "shape as X)."
        ),
    )
    p.add_argument("--pdb", required=True, help="PDB file of the molecule (all hydrogens)")
    p.add_argument("--coords", required=True, help=".npy coordinates in nm, [B, N, 3] or [N, 3]")
    p.add_argument("--out", required=True, help="output .npy of energies in kJ/mol")
    p.add_argument("--forces", default=None, help="optional output .npy of forces in kJ/mol/nm")
    p.add_argument("--solvent", choices=("obc2", "vacuum"), default="obc2")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="precision of the evaluation and of the outputs (default float64)")
    p.add_argument("--backend", choices=("torch", "openmm"), default="torch",
                   help="torch: TorchEnergy (default); openmm: OpenMM Reference platform")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="OpenMM worker processes (openmm)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from moltune.common.errors import InvalidInputError, check_input_file, check_output_file
    from moltune.common.io import save_npy
    from moltune.physics.energy import TorchEnergy, check_coordinates, read_pdb_topology

    check_output_file(args.out, inputs=(args.pdb, args.coords))
    if args.forces:
        check_output_file(args.forces, "--forces", inputs=(args.pdb, args.coords, args.out))
    topology = read_pdb_topology(args.pdb)
    coords_path = check_input_file(args.coords, "coordinates file")
    try:
        x = np.load(coords_path, allow_pickle=False)
    except Exception as exc:  # any reader failure means a bad input file
        raise InvalidInputError(f"cannot read {coords_path} as a .npy array: {exc}") from exc
    if not isinstance(x, np.ndarray):
        names = ", ".join(x.files)
        x.close()
        raise InvalidInputError(f"{coords_path} is an .npz archive (arrays: {names}); give one "
                                "[B, N, 3] or [N, 3] array as .npy")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise InvalidInputError(f"{coords_path}: coordinates must be numbers, got {x.dtype}")
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    n_atoms = topology.getNumAtoms()
    try:
        xt = check_coordinates(torch.as_tensor(x.astype(np.float64)), n_atoms)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{coords_path} ({args.pdb} has {n_atoms} atoms): {exc}") from exc

    if args.backend == "torch":
        model = TorchEnergy.from_topology(topology, solvent=args.solvent).to(dtype)
        u, f = model.energy_and_forces(xt.to(dtype))
        u, f = u.numpy(), f.numpy()
    else:
        from moltune.physics.openmm_energy import OpenMMEnergy

        with OpenMMEnergy(topology, solvent=args.solvent, n_workers=args.workers) as model:
            u, f = model.energy_and_forces(xt)
    np_dtype = np.float64 if args.dtype == "float64" else np.float32
    save_npy(args.out, np.asarray(u, dtype=np_dtype))
    if args.forces:
        save_npy(args.forces, np.asarray(f, dtype=np_dtype))
    u_flat = np.atleast_1d(u)
    finite = u_flat[np.isfinite(u_flat)]
    summary = (f"min {finite.min():.3f}, mean {finite.mean():.3f}, max {finite.max():.3f} kJ/mol"
               if finite.size else "no finite energies")
    print(f"{u_flat.size} configuration(s), {args.solvent}, {args.backend}, {args.dtype}: "
          f"{summary} -> {args.out}" + (f", forces -> {args.forces}" if args.forces else ""))
    return 0
