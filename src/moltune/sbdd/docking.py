"""AutoDock Vina scores of ligands in their pocket (score-only, locally minimised, optionally docked).

Receptor: hydrogens added at a chosen pH by PDBFixer / OpenMM Modeller (existing ones are kept),
then typed and written as PDBQT by meeko's ``Polymer`` route. Residues further than the Vina
interaction cutoff (8 Å) plus a margin from the box are cropped away first: they cannot contribute
to any grid map, and cropping makes preparation fast on large proteins. Metal ions Vina can type
(Mg, Mn, Zn, Ca, Fe) are kept; other heterogens (cofactors, glycans, buffer) are removed and listed.

Ligands: RDKit (hydrogens added with ``addCoords=True``) then meeko ``MoleculePreparation``.
A molecule that cannot be prepared (unparsable, bad valence, radical, disconnected, element Vina
cannot type, outside the box) is never dropped silently: its row carries a status and a message.

Scores are Vina's "estimated free energy of binding" in kcal/mol (total, with the torsion term).
Molecules run in parallel worker processes, each holding its own ``Vina`` object and grid maps.
"""

from __future__ import annotations

import io
import math
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moltune.common.errors import InputFileError, InvalidInputError

#: Vina's interaction cutoff (Å): receptor atoms further than this from the box never matter.
VINA_CUTOFF_A = 8.0
#: Elements Vina's AutoDock atom typing accepts in a ligand (boron, selenium, metals are not).
LIGAND_ELEMENTS = frozenset({"H", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I", "Si"})
#: Metal ions kept in the receptor, with their PDBQT (AutoDock) type.
RECEPTOR_METALS = {"MG": "Mg", "MN": "Mn", "ZN": "Zn", "CA": "Ca", "FE": "Fe", "FE2": "Fe"}

STATUS_OK = "ok"
STATUS_SKIPPED = "skipped"  # could not be prepared (chemistry / typing)
STATUS_OUTSIDE = "outside_box"  # prepared, but not inside the grid box
STATUS_ERROR = "error"  # Vina or the worker failed on a prepared molecule
CSV_COLUMNS = (
    "index", "smiles", "score_only_kcalmol", "minimized_kcalmol", "docked_kcalmol", "status",
    "message", "n_heavy_atoms", "seconds",
)


class LigandPreparationError(ValueError):
    """A ligand cannot be turned into a Vina PDBQT; the message says why."""


@dataclass
class DockingConfig:
    """Parameters of a scoring run (distances in Å)."""

    padding_A: float = 4.0  # added on each side of the reference ligand's heavy-atom extent
    spacing_A: float = 0.375  # grid spacing of the Vina maps
    scoring: str = "vina"  # "vina" or "vinardo"
    exhaustiveness: int = 0  # > 0 also runs a global Vina docking with this exhaustiveness
    n_poses: int = 1  # poses kept by the optional docking
    seed: int = 0  # Vina's random seed (docking only; score and minimisation are deterministic)
    ph: float = 7.0  # pH for receptor hydrogens
    crop_margin_A: float = 2.0  # receptor kept within VINA_CUTOFF_A + this of the box
    minimize_max_steps: int = 0  # 0: Vina's default (25 + movable atoms) / 3


@dataclass(frozen=True)
class Box:
    """Axis-aligned search box: centre and edge lengths in Å."""

    center_A: tuple[float, float, float]
    size_A: tuple[float, float, float]

    def distance_A(self, xyz_A: np.ndarray) -> np.ndarray:
        """Distance of each point [N,3] to the box (0 inside), Å."""
        excess = np.abs(np.asarray(xyz_A, float) - np.asarray(self.center_A)) - (
            np.asarray(self.size_A) / 2.0
        )
        return np.linalg.norm(np.clip(excess, 0.0, None), axis=-1)

    def contains(self, xyz_A: np.ndarray) -> np.ndarray:
        """Boolean mask [N]: point strictly inside the box."""
        return self.distance_A(xyz_A) == 0.0


@dataclass
class Receptor:
    """A receptor prepared for Vina (rigid PDBQT text) and what preparation did to it."""

    pdbqt: str
    source: str
    n_atoms: int
    n_residues: int
    removed_heterogens: dict[str, int] = field(default_factory=dict)
    metals_kept: list[str] = field(default_factory=list)
    dropped_residues: list[str] = field(default_factory=list)
    cropped_residues: int = 0
    notes: list[str] = field(default_factory=list)

    def write(self, path: str | os.PathLike) -> Path:
        from moltune.common.io import write_text

        return write_text(path, self.pdbqt)

    def info(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("pdbqt")
        return d


@dataclass
class DockingResult:
    """One molecule's outcome; scores are NaN unless computed."""

    index: int
    smiles: str
    score_only_kcalmol: float = math.nan
    minimized_kcalmol: float = math.nan
    docked_kcalmol: float = math.nan
    status: str = STATUS_OK
    message: str = ""
    n_heavy_atoms: int = 0
    seconds: float = 0.0


# ----------------------------------------------------------------------------- inputs


def read_ligands(sdf_path: str | os.PathLike) -> list[Any]:
    """Read every record of an SDF without sanitising (so bad molecules reach the per-molecule
    checks with a message); an unparsable record is kept as ``None`` at its index."""
    from moltune.sbdd.chemistry import read_sdf_molecules

    return read_sdf_molecules(sdf_path, "ligand file")


def read_reference_ligand(sdf_path: str | os.PathLike):
    """First molecule of an SDF, sanitised (raises a UserError naming the file when it fails)."""
    from moltune.sbdd.chemistry import read_sdf_molecules

    mol = read_sdf_molecules(sdf_path, "reference ligand file")[0]
    if mol is None:
        raise InvalidInputError(f"reference ligand in {sdf_path} could not be parsed")
    if mol.GetNumConformers() == 0:
        raise InvalidInputError(f"reference ligand in {sdf_path} has no coordinates")
    return mol


def box_around_ligand(mol_or_xyz: Any, padding_A: float = 4.0) -> Box:
    """Box centred on the heavy atoms of a ligand (RDKit Mol or [N,3] Å), edge = extent + 2·padding."""
    if isinstance(mol_or_xyz, np.ndarray):
        xyz = np.asarray(mol_or_xyz, float)
    else:
        mol = mol_or_xyz
        pos = mol.GetConformer().GetPositions()
        heavy = [a.GetAtomicNum() > 1 for a in mol.GetAtoms()]
        xyz = pos[heavy] if any(heavy) else pos
    if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
        raise InvalidInputError(f"reference coordinates must be [N,3], got {xyz.shape}")
    if not np.all(np.isfinite(xyz)):
        raise InvalidInputError("reference ligand has non-finite coordinates")
    if padding_A < 0:
        raise InvalidInputError(f"box padding must be >= 0 Å, got {padding_A}")
    lo, hi = xyz.min(0), xyz.max(0)
    center = tuple(float(v) for v in (lo + hi) / 2.0)
    size = tuple(float(v) for v in (hi - lo) + 2.0 * padding_A)
    return Box(center, size)


# ----------------------------------------------------------------------------- receptor


_MEEKO_BAD_RES = re.compile(r"unable to build rdkit mol for residue \S+ corresponding to key (\S+)")


def _residue_key(line: str) -> tuple[str, str, str, str]:
    return (line[21], line[22:26], line[26], line[17:20])


def _crop_and_split(pdb_text: str, box: Box | None, keep_within_A: float):
    """Split PDB text into protein-side lines (cropped to residues near the box) and metal ions."""
    groups: dict[tuple, list[str]] = {}
    order: list[tuple] = []
    for line in pdb_text.splitlines():
        if line.startswith(("ATOM", "HETATM")):
            key = _residue_key(line)
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append(line)
    if not order:
        raise InvalidInputError("receptor PDB has no ATOM/HETATM records")
    kept_lines, metals, n_cropped = [], [], 0
    prev_chain = None
    for key in order:
        lines = groups[key]
        try:
            xyz = np.array([[float(ln[30:38]), float(ln[38:46]), float(ln[46:54])] for ln in lines])
        except ValueError as exc:
            raise InvalidInputError(f"receptor PDB: bad coordinates in residue {key}: {exc}") from exc
        if not np.all(np.isfinite(xyz)):
            raise InvalidInputError(f"receptor PDB: non-finite coordinates in residue {key}")
        if box is not None and box.distance_A(xyz).min() > keep_within_A:
            n_cropped += 1
            continue
        resname = key[3].strip().upper()
        element = lines[0][76:78].strip().upper() if len(lines[0]) >= 78 else ""
        if lines[0].startswith("HETATM") and len(lines) == 1 and resname in RECEPTOR_METALS and (
            element in ("", resname[:2])
        ):
            metals.append((resname, lines[0]))
            continue
        if prev_chain is not None and key[0] != prev_chain:
            kept_lines.append("TER")
        prev_chain = key[0]
        kept_lines.extend(lines)
    kept_lines.append("END")
    return "\n".join(kept_lines) + "\n", metals, n_cropped


def _metal_pdbqt_line(serial: int, pdb_line: str, resname: str) -> str:
    ad_type = RECEPTOR_METALS[resname]
    x, y, z = (float(pdb_line[30:38]), float(pdb_line[38:46]), float(pdb_line[46:54]))
    name = pdb_line[12:16]
    return (
        f"ATOM  {serial % 100000:5d} {name} {pdb_line[17:20]} {pdb_line[21]}{pdb_line[22:26]}"
        f"{pdb_line[26]}   {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00    {0.0:+6.3f} {ad_type:<2s}"
    )


def prepare_receptor(
    pdb_path: str | os.PathLike, box: Box | None = None, config: DockingConfig | None = None
) -> Receptor:
    """Protonate (pH ``config.ph``) and type a protein PDB for Vina; crop to ``box`` when given."""
    import logging
    import warnings

    from meeko import PDBQTWriterLegacy, Polymer
    from openmm.app import PDBFile
    from pdbfixer import PDBFixer

    config = config or DockingConfig()
    path = Path(pdb_path)
    if not path.is_file():
        raise InputFileError(f"receptor PDB not found: {path}")
    text = path.read_text()
    keep_within = VINA_CUTOFF_A + config.crop_margin_A
    cropped_text, metals, n_cropped = _crop_and_split(text, box, keep_within)

    fixer = PDBFixer(pdbfile=io.StringIO(cropped_text))
    het_counts: dict[str, int] = {}
    fixer.findMissingResidues()
    fixer.missingResidues = {}  # never model missing loops: they were not observed
    fixer.findNonstandardResidues()
    fixer.replaceNonstandardResidues()
    standard = _standard_residue_names()
    for res in fixer.topology.residues():
        if res.name not in standard:
            het_counts[res.name] = het_counts.get(res.name, 0) + 1
    fixer.removeHeterogens(keepWater=False)
    if fixer.topology.getNumAtoms() == 0:
        raise InvalidInputError(f"{path}: no protein residues within {keep_within} Å of the box")
    fixer.findMissingAtoms()
    fixer.missingTerminals = {}  # meeko's templates accept blunt ends; added OXT broke its parser
    fixer.addMissingAtoms()
    fixer.addMissingHydrogens(config.ph)
    buf = io.StringIO()
    PDBFile.writeFile(fixer.topology, fixer.positions, buf, keepIds=True)
    protonated = buf.getvalue()

    to_delete: list[str] = []
    meeko_logger = logging.getLogger("meeko")
    old_level = meeko_logger.level
    meeko_logger.setLevel(logging.ERROR)
    try:
        for _ in range(50):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    polymer = Polymer.from_pdb_string(
                        protonated, allow_bad_res=True, residues_to_delete=to_delete or None
                    )
                break
            except RuntimeError as exc:
                match = _MEEKO_BAD_RES.search(str(exc))
                if not match or match.group(1) in to_delete:
                    raise InvalidInputError(f"{path}: meeko could not type the receptor: {exc}")
                to_delete.append(match.group(1))
        else:  # pragma: no cover - fifty unbuildable residues means the file is broken
            raise InvalidInputError(f"{path}: too many residues meeko cannot build")
        rigid, _flex = PDBQTWriterLegacy.write_string_from_polymer(polymer)
    finally:
        meeko_logger.setLevel(old_level)
    dropped = sorted(set(to_delete) | set(polymer.get_ignored_monomers()))
    n_atoms = sum(1 for ln in rigid.splitlines() if ln.startswith(("ATOM", "HETATM")))
    lines = [rigid.rstrip("\n")] if rigid.strip() else []
    for i, (resname, line) in enumerate(metals):
        lines.append(_metal_pdbqt_line(n_atoms + i + 1, line, resname))
    notes = []
    if dropped:
        notes.append(
            f"residues meeko could not match to a template were left out: {', '.join(dropped)}"
        )
    if het_counts:
        notes.append(
            "heterogens removed: "
            + ", ".join(f"{k} x{v}" for k, v in sorted(het_counts.items()))
        )
    return Receptor(
        pdbqt="\n".join(lines) + "\n",
        source=str(path),
        n_atoms=n_atoms + len(metals),
        n_residues=len(polymer.get_valid_monomers()),
        removed_heterogens=het_counts,
        metals_kept=[f"{r}:{ln[21]}:{ln[22:26].strip()}" for r, ln in metals],
        dropped_residues=dropped,
        cropped_residues=n_cropped,
        notes=notes,
    )


def _standard_residue_names() -> set[str]:
    from pdbfixer.pdbfixer import proteinResidues

    return set(proteinResidues) | {"HID", "HIE", "HIP", "CYX", "ASH", "GLH", "LYN"}


# ----------------------------------------------------------------------------- ligands


def _smiles(mol) -> str:
    from rdkit import Chem

    if mol is None:
        return ""
    try:
        m = Chem.Mol(mol)
        Chem.SanitizeMol(m)
        return Chem.MolToSmiles(Chem.RemoveHs(m))
    except Exception:  # noqa: BLE001 - an unsanitisable molecule still gets a best-effort string
        try:
            return Chem.MolToSmiles(mol, canonical=False)
        except Exception:  # noqa: BLE001
            return ""


def prepare_ligand(mol) -> tuple[str, Any]:
    """Check a 3D molecule, add hydrogens (RDKit, ``addCoords=True``) and write Vina PDBQT with
    meeko. Returns ``(pdbqt, mol_with_h)``; raises ``LigandPreparationError`` saying why not."""
    from rdkit import Chem

    if mol is None:
        raise LigandPreparationError("the SDF record could not be parsed")
    if mol.GetNumAtoms() == 0:
        raise LigandPreparationError("molecule has no atoms")
    if mol.GetNumConformers() == 0:
        raise LigandPreparationError("molecule has no coordinates")
    pos = mol.GetConformer().GetPositions()
    if not np.all(np.isfinite(pos)):
        raise LigandPreparationError("molecule has non-finite coordinates")
    if not mol.GetConformer().Is3D():
        raise LigandPreparationError("molecule has 2D coordinates only (no pose to score)")
    bad = sorted({a.GetSymbol() for a in mol.GetAtoms()} - LIGAND_ELEMENTS)
    if bad:
        raise LigandPreparationError(
            f"element(s) {', '.join(bad)} cannot be typed by Vina "
            f"(supported: {', '.join(sorted(LIGAND_ELEMENTS))})"
        )
    mol = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(mol)
    except Exception as exc:  # noqa: BLE001 - RDKit raises several sanitisation exception types
        raise LigandPreparationError(f"RDKit sanitisation failed: {exc}") from None
    n_frags = len(Chem.GetMolFrags(mol))
    if n_frags > 1:
        raise LigandPreparationError(f"molecule is disconnected ({n_frags} fragments)")
    radicals = [a.GetIdx() for a in mol.GetAtoms() if a.GetNumRadicalElectrons() > 0]
    if radicals:
        raise LigandPreparationError(
            f"radical electrons on atom(s) {radicals}: hydrogens cannot be assigned"
        )
    try:
        molh = Chem.AddHs(mol, addCoords=True)
    except Exception as exc:  # noqa: BLE001
        raise LigandPreparationError(f"adding hydrogens failed: {exc}") from None
    from meeko import MoleculePreparation, PDBQTWriterLegacy

    try:
        setups = MoleculePreparation().prepare(molh)
    except Exception as exc:  # noqa: BLE001 - meeko raises plain RuntimeError/ValueError
        raise LigandPreparationError(f"meeko preparation failed: {exc}") from None
    if len(setups) != 1:
        raise LigandPreparationError(f"meeko produced {len(setups)} setups, expected 1")
    pdbqt, ok, err = PDBQTWriterLegacy.write_string(setups[0])
    if not ok:
        first = err.strip().splitlines()[0] if err.strip() else "unknown error"
        raise LigandPreparationError(f"meeko could not write PDBQT: {first}")
    return pdbqt, molh


# ----------------------------------------------------------------------------- scoring

_WORKER: dict[str, Any] = {}


def _init_worker(receptor_pdbqt: str, box: Box, config: DockingConfig) -> None:
    """Build this process's own Vina object with the receptor and its grid maps."""
    import meeko  # noqa: F401  (imported here so per-molecule timings exclude the import)
    from vina import Vina

    fd, tmp = tempfile.mkstemp(suffix=".pdbqt", prefix="moltune_receptor_")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(receptor_pdbqt)
        v = Vina(sf_name=config.scoring, cpu=1, seed=config.seed, verbosity=0)
        v.set_receptor(tmp)
    finally:
        os.unlink(tmp)
    v.compute_vina_maps(
        center=list(box.center_A), box_size=list(box.size_A), spacing=config.spacing_A
    )
    _WORKER.update(vina=v, box=box, config=config)


def _score_one(index: int, mol) -> DockingResult:
    t0 = time.perf_counter()
    res = DockingResult(index=index, smiles=_smiles(mol))
    try:
        _score_into(res, mol)
    except Exception as exc:  # noqa: BLE001 - one molecule must never stop the others
        res.status, res.message = STATUS_ERROR, f"{type(exc).__name__}: {exc}".strip()
    res.seconds = time.perf_counter() - t0
    return res


def _score_into(res: DockingResult, mol) -> None:
    v, box, config = _WORKER["vina"], _WORKER["box"], _WORKER["config"]
    try:
        pdbqt, molh = prepare_ligand(mol)
    except LigandPreparationError as exc:
        res.status, res.message = STATUS_SKIPPED, str(exc)
        return
    res.n_heavy_atoms = molh.GetNumHeavyAtoms()
    xyz = molh.GetConformer().GetPositions()
    outside = ~box.contains(xyz)
    if outside.any():
        res.status = STATUS_OUTSIDE
        res.message = (
            f"{int(outside.sum())} of {len(xyz)} atoms lie outside the box (up to "
            f"{box.distance_A(xyz).max():.1f} Å from it); Vina cannot score them — increase the "
            "padding or check the pose's frame"
        )
        return
    try:
        v.set_ligand_from_string(pdbqt)
        res.score_only_kcalmol = float(v.score()[0])
        res.minimized_kcalmol = float(v.optimize(max_steps=config.minimize_max_steps)[0])
        if config.exhaustiveness > 0:
            v.dock(exhaustiveness=config.exhaustiveness, n_poses=config.n_poses)
            res.docked_kcalmol = float(v.energies(n_poses=1)[0][0])
    except (RuntimeError, TypeError, ValueError) as exc:  # Vina reports its errors this way
        res.status, res.message = STATUS_ERROR, " ".join(str(exc).split())
        return
    finite = [s for s in (res.score_only_kcalmol, res.minimized_kcalmol) if math.isfinite(s)]
    if len(finite) < 2:
        res.status, res.message = STATUS_ERROR, "Vina returned a non-finite score"
    elif res.score_only_kcalmol > 0:
        res.message = "positive score-only energy: the pose as given clashes with the receptor"


def score_molecules(
    mols: Sequence[Any],
    receptor: Receptor,
    box: Box,
    config: DockingConfig | None = None,
    n_workers: int = 1,
    progress: bool = True,
) -> list[DockingResult]:
    """Vina score-only and minimised scores (and docked, if ``config.exhaustiveness`` > 0) for
    every molecule, in input order. ``n_workers`` > 1 runs a process pool (spawn), each worker
    with its own Vina object; ``n_workers`` = 1 runs in this process."""
    from tqdm.auto import tqdm

    config = config or DockingConfig()
    if n_workers < 1:
        raise InvalidInputError(f"n_workers must be >= 1, got {n_workers}")
    if config.scoring not in ("vina", "vinardo"):
        raise InvalidInputError(f"scoring must be 'vina' or 'vinardo', got {config.scoring!r}")
    results: list[DockingResult | None] = [None] * len(mols)
    bar = tqdm(total=len(mols), desc="vina", unit="mol", disable=not progress)
    if n_workers == 1 or len(mols) <= 1:
        _init_worker(receptor.pdbqt, box, config)
        try:
            for i, mol in enumerate(mols):
                results[i] = _score_one(i, mol)
                bar.update()
        finally:
            _WORKER.clear()
            bar.close()
        return results  # type: ignore[return-value]

    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    n = min(n_workers, len(mols))
    try:
        with ProcessPoolExecutor(
            max_workers=n, mp_context=ctx, initializer=_init_worker,
            initargs=(receptor.pdbqt, box, config),
        ) as pool:
            futures = {pool.submit(_score_one, i, mol): i for i, mol in enumerate(mols)}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    results[i] = fut.result()
                except BrokenProcessPool as exc:
                    results[i] = DockingResult(
                        index=i, smiles=_smiles(mols[i]), status=STATUS_ERROR,
                        message=f"worker pool failed before this molecule was scored ({exc}); "
                        "a crash inside Vina, a failed receptor/map setup or out of memory",
                    )
                bar.update()
    finally:
        bar.close()
    return results  # type: ignore[return-value]


def summarize(results: Iterable[DockingResult]) -> dict[str, Any]:
    """Counts per status and statistics of the scores of the molecules scored (kcal/mol)."""
    results = list(results)
    out: dict[str, Any] = {"n_molecules": len(results)}
    for status in (STATUS_OK, STATUS_SKIPPED, STATUS_OUTSIDE, STATUS_ERROR):
        out[f"n_{status}"] = sum(r.status == status for r in results)
    for col in ("score_only_kcalmol", "minimized_kcalmol", "docked_kcalmol"):
        vals = np.array([getattr(r, col) for r in results if r.status == STATUS_OK], float)
        vals = vals[np.isfinite(vals)]
        out[col] = (
            {"mean": float(vals.mean()), "median": float(np.median(vals)),
             "min": float(vals.min()), "max": float(vals.max()), "n": len(vals)}
            if len(vals) else None
        )
    out["not_scored"] = [
        {"index": r.index, "status": r.status, "message": r.message}
        for r in results if r.status != STATUS_OK
    ]
    return out


def write_results_csv(path: str | os.PathLike, results: Sequence[DockingResult]) -> Path:
    """One row per molecule (columns ``CSV_COLUMNS``), written atomically."""
    import csv

    from moltune.common.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for r in results:
            row = asdict(r)
            for k in ("score_only_kcalmol", "minimized_kcalmol", "docked_kcalmol"):
                row[k] = "" if not math.isfinite(row[k]) else f"{row[k]:.3f}"
            row["seconds"] = f"{r.seconds:.3f}"
            w.writerow([row[c] for c in CSV_COLUMNS])
    return Path(path)


def versions() -> dict[str, str]:
    """Versions of the docking stack, for reports."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("vina", "meeko", "rdkit", "pdbfixer", "openmm", "gemmi"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
