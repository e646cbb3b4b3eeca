"""Protein pockets, ligands and the DiffSBDD data layout.

A *pocket* is every standard amino-acid residue of the first model that has **any** atom
(hydrogens included, if the PDB has them) strictly closer than ``cutoff_A`` (8 Å) to any ligand
heavy atom; it keeps every non-hydrogen atom of those residues in file order, alternate locations
resolved by Biopython (highest occupancy). Ligand and pocket atoms are one-hot encoded over the
ten-element vocabulary :data:`moltune.sbdd.vocab.ELEMENTS` of the released DiffSBDD checkpoint
(no "other" column). All coordinates are in Å, in the PDB frame.

:func:`process_complexes` turns a folder of complexes (``<id>/protein.pdb`` + ``<id>/ligand.sdf``)
into DiffSBDD's processed layout (``train.npz``, ``val.npz``, ``test.npz`` with the keys the
original ``process_crossdock.py`` writes), a split **by protein** (complexes whose chains share
sequence identity go to the same side), per-pocket embeddings and a ``skipped.json`` naming every
complex left out and why.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moltune.common.errors import (
    InputFileError,
    InvalidInputError,
    UserError,
    check_number,
    check_output_dir,
    check_pdb_file,
)
from moltune.common.io import current_umask, save_npy, save_npz, write_json, write_text
from moltune.sbdd.vocab import ELEMENT_INDEX, ELEMENTS, N_ELEMENTS

log = logging.getLogger(__name__)

HYDROGEN_ELEMENTS = frozenset({"H", "D", "T"})

#: Keys of each ``<split>.npz``, as the original DiffSBDD ``process_crossdock.py`` writes them.
NPZ_KEYS = (
    "names",
    "lig_coords",
    "lig_one_hot",
    "lig_mask",
    "pocket_coords",
    "pocket_one_hot",
    "pocket_mask",
)
SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------
# Element encoding
# --------------------------------------------------------------------------------------------
def normalise_element(symbol: str) -> str:
    """'CL' / 'cl' / ' Cl' -> 'Cl' (PDB files write elements in upper case)."""
    s = symbol.strip()
    return s[:1].upper() + s[1:].lower()


def one_hot_elements(symbols: Sequence[str], what: str = "atom") -> tuple[np.ndarray, np.ndarray]:
    """Element symbols -> (one-hot [n,10] float32, index [n] int64) over ``ELEMENTS``.

    Raises InvalidInputError naming every symbol outside the vocabulary.
    """
    norm = [normalise_element(s) for s in symbols]
    unknown = sorted({s for s in norm if s not in ELEMENT_INDEX})
    if unknown:
        raise InvalidInputError(
            f"{what} element(s) {', '.join(unknown)} not in the vocabulary {', '.join(ELEMENTS)}"
        )
    idx = np.array([ELEMENT_INDEX[s] for s in norm], dtype=np.int64)
    one_hot = np.zeros((len(norm), N_ELEMENTS), dtype=np.float32)
    one_hot[np.arange(len(norm)), idx] = 1.0
    return one_hot, idx


def _check_finite(coords: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(coords)):
        raise InvalidInputError(f"{what} has non-finite (NaN/inf) coordinates")


# --------------------------------------------------------------------------------------------
# Ligand
# --------------------------------------------------------------------------------------------
@dataclass
class Ligand:
    """Heavy atoms of a ligand: coordinates in Å (file frame) and the 10-column one-hot."""

    coords_A: np.ndarray  # [n,3] float64
    one_hot: np.ndarray  # [n,10] float32
    atom_type_index: np.ndarray  # [n] int64
    elements: list[str]
    smiles: str | None
    mol: Any = field(repr=False, default=None)  # RDKit Mol, heavy atoms only

    @property
    def n_atoms(self) -> int:
        return len(self.elements)


def ligand_from_mol(mol: Any, name: str = "ligand") -> Ligand:
    """Featurise an RDKit molecule with a conformer: hydrogens removed, heavy atoms one-hot."""
    from rdkit import Chem

    if mol is None:
        raise InvalidInputError(f"{name}: no molecule")
    if mol.GetNumConformers() == 0:
        raise InvalidInputError(f"{name}: molecule has no 3D coordinates")
    heavy = Chem.RWMol(mol)
    for atom in sorted(heavy.GetAtoms(), key=lambda a: -a.GetIdx()):
        if atom.GetAtomicNum() == 1:
            heavy.RemoveAtom(atom.GetIdx())
    heavy = heavy.GetMol()
    if heavy.GetNumAtoms() == 0:
        raise InvalidInputError(f"{name}: ligand has no heavy atoms")
    elements = [a.GetSymbol() for a in heavy.GetAtoms()]
    one_hot, idx = one_hot_elements(elements, what=f"{name}: ligand")
    coords = np.asarray(heavy.GetConformer().GetPositions(), dtype=np.float64)
    _check_finite(coords, f"{name}: ligand")
    try:
        m = Chem.Mol(heavy)
        Chem.SanitizeMol(m)
        smiles = Chem.MolToSmiles(Chem.RemoveHs(m))
    except Exception:  # noqa: BLE001 - a SMILES is informative only
        smiles = None
    return Ligand(coords, one_hot, idx, elements, smiles, heavy)


def ligand_from_sdf(path: str | os.PathLike) -> Ligand:
    """Read the first record of an SDF file and featurise its heavy atoms (hydrogens removed)."""
    from moltune.sbdd.chemistry import read_sdf_molecules

    mol = read_sdf_molecules(path, "ligand file")[0]
    if mol is None:
        raise InvalidInputError(f"cannot parse the first molecule of {path}")
    return ligand_from_mol(mol, name=str(path))


# --------------------------------------------------------------------------------------------
# Pocket
# --------------------------------------------------------------------------------------------
@dataclass
class Pocket:
    """Pocket atoms (heavy atoms of the selected residues), coordinates in Å in the PDB frame."""

    coords_A: np.ndarray  # [M,3] float64
    one_hot: np.ndarray  # [M,10] float32
    residue_ids: list[str]  # "chain:resnum" (insertion code appended when present)
    sequence: str  # one-letter code of the pocket residues, in file order
    residue_names: list[str] = field(default_factory=list)  # three-letter names
    atom_names: list[str] = field(default_factory=list)
    elements: list[str] = field(default_factory=list)
    atom_residue_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pocket_id: str = "pocket"
    pdb_path: str | None = None
    #: full sequence (standard residues, file order) of each chain that holds pocket residues
    chain_sequences: dict[str, str] = field(default_factory=dict)
    #: for each pocket residue, its 0-based position in ``chain_sequences[chain]``
    residue_chain_positions: list[int] = field(default_factory=list)

    @property
    def n_atoms(self) -> int:
        return int(self.coords_A.shape[0])

    @property
    def n_residues(self) -> int:
        return len(self.residue_ids)

    @property
    def atom_type_index(self) -> np.ndarray:
        return self.one_hot.argmax(axis=1).astype(np.int64)


_GENERIC_STEMS = {"protein", "receptor", "pocket", "rec", "system", "complex"}


def default_pocket_id(pdb_path: str | os.PathLike) -> str:
    """``.../3rfm.pdb`` -> ``3rfm``; ``.../3rfm/protein.pdb`` -> ``3rfm`` (generic stems use the folder)."""
    p = Path(pdb_path)
    stem = p.stem
    if stem.lower() in _GENERIC_STEMS and p.resolve().parent.name:
        return p.resolve().parent.name
    return stem


def _residue_id(residue: Any) -> str:
    _, resnum, icode = residue.id
    icode = str(icode).strip()
    return f"{residue.get_parent().id}:{resnum}{icode}"


def _parse_resi_list(resi_list: Iterable[str] | str) -> list[str]:
    if isinstance(resi_list, str):
        resi_list = resi_list.replace(",", " ").split()
    out = []
    for r in resi_list:
        r = str(r).strip()
        if ":" not in r:
            raise InvalidInputError(f"residue id {r!r} is not of the form CHAIN:RESNUM (e.g. A:52)")
        out.append(r)
    return out


def _load_structure(pdb_path: Path) -> Any:
    import warnings

    from Bio.PDB import PDBParser

    check_pdb_file(pdb_path, "protein file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = PDBParser(QUIET=True).get_structure("", str(pdb_path))
    except Exception as exc:
        raise InvalidInputError(f"cannot parse PDB file {pdb_path}: {exc}") from exc
    models = list(structure)
    if not models:
        raise InvalidInputError(f"cannot parse PDB file {pdb_path}: no ATOM/HETATM records")
    return models[0]


def pocket_from_pdb(
    pdb_path: str | os.PathLike,
    ref_ligand_sdf: str | os.PathLike | None = None,
    resi_list: Iterable[str] | str | None = None,
    cutoff_A: float = 8.0,
    *,
    ligand_coords_A: np.ndarray | None = None,
    pocket_id: str | None = None,
) -> Pocket:
    """Build the pocket of ``pdb_path`` around a reference ligand or from a residue list.

    Exactly one of ``ref_ligand_sdf`` (SDF; its heavy atoms are used), ``ligand_coords_A``
    ([n,3] Å, heavy atoms) or ``resi_list`` ("A:52 A:53 ..." or a list) must be given.
    Residues: standard amino acids of the first model with any atom (hydrogens included)
    at distance < ``cutoff_A`` Å from any ligand heavy atom. Atoms: every non-hydrogen atom of
    those residues, file order.
    """
    from Bio.Data.PDBData import protein_letters_3to1
    from Bio.PDB.Polypeptide import is_aa
    from scipy.spatial import cKDTree

    pdb_path = Path(pdb_path)
    given = sum(x is not None for x in (ref_ligand_sdf, ligand_coords_A, resi_list))
    if given != 1:
        raise InvalidInputError(
            "give exactly one of a reference ligand (SDF), ligand coordinates, or a residue list"
        )
    model = _load_structure(pdb_path)
    residues = [r for r in model.get_residues() if is_aa(r.get_resname(), standard=True)]
    if not residues:
        raise InvalidInputError(f"{pdb_path} has no standard amino-acid residues")

    if resi_list is not None:
        wanted = _parse_resi_list(resi_list)
        by_id = {_residue_id(r): r for r in residues}
        missing = [w for w in wanted if w not in by_id]
        if missing:
            raise InvalidInputError(
                f"residue(s) {', '.join(missing)} not found among the standard residues of "
                f"{pdb_path} (first model)"
            )
        wanted_set = set(wanted)
        selected = [r for r in residues if _residue_id(r) in wanted_set]
    else:
        if ref_ligand_sdf is not None:
            lig_xyz = ligand_from_sdf(ref_ligand_sdf).coords_A
        else:
            lig_xyz = np.asarray(ligand_coords_A, dtype=np.float64).reshape(-1, 3)
            _check_finite(lig_xyz, "ligand")
        if len(lig_xyz) == 0:
            raise InvalidInputError("reference ligand has no heavy atoms")
        all_xyz = []
        owner = []
        for i, res in enumerate(residues):
            for atom in res.get_atoms():
                all_xyz.append(atom.coord)
                owner.append(i)
        all_xyz = np.asarray(all_xyz, dtype=np.float64)
        _check_finite(all_xyz, str(pdb_path))
        dist, _ = cKDTree(lig_xyz).query(all_xyz, k=1)
        close = np.zeros(len(residues), dtype=bool)
        close[np.asarray(owner)[dist < cutoff_A]] = True
        selected = [r for r, c in zip(residues, close) if c]
        if not selected:
            raise InvalidInputError(
                f"no standard residue of {pdb_path} has an atom within {cutoff_A} Å of the "
                f"ligand (nearest protein atom {dist.min():.1f} Å away): is the ligand in the "
                "protein's coordinate frame?"
            )

    coords, elements, atom_names, atom_res = [], [], [], []
    for i, res in enumerate(selected):
        for atom in res.get_atoms():
            el = normalise_element(atom.element or atom.get_id()[:1])
            if el.upper() in HYDROGEN_ELEMENTS:
                continue
            coords.append(atom.coord)
            elements.append(el)
            atom_names.append(atom.get_id())
            atom_res.append(i)
    coords_arr = np.asarray(coords, dtype=np.float32).astype(np.float64).reshape(-1, 3)
    _check_finite(coords_arr, str(pdb_path))
    one_hot, _ = one_hot_elements(elements, what=f"{pdb_path}: pocket")

    chain_sequences: dict[str, str] = {}
    chain_positions: dict[tuple[str, str], int] = {}
    selected_chains = {r.get_parent().id for r in selected}
    for chain in model:
        if chain.id not in selected_chains:
            continue
        seq = []
        for r in chain:
            if is_aa(r.get_resname(), standard=True):
                chain_positions[(chain.id, _residue_id(r))] = len(seq)
                seq.append(protein_letters_3to1[r.get_resname().upper()])
        chain_sequences[chain.id] = "".join(seq)

    return Pocket(
        coords_A=coords_arr,
        one_hot=one_hot,
        residue_ids=[_residue_id(r) for r in selected],
        sequence="".join(protein_letters_3to1[r.get_resname().upper()] for r in selected),
        residue_names=[r.get_resname().upper() for r in selected],
        atom_names=atom_names,
        elements=elements,
        atom_residue_index=np.asarray(atom_res, dtype=np.int64),
        pocket_id=pocket_id or default_pocket_id(pdb_path),
        pdb_path=str(pdb_path),
        chain_sequences=chain_sequences,
        residue_chain_positions=[
            chain_positions[(r.get_parent().id, _residue_id(r))] for r in selected
        ],
    )


def contact_fraction(ligand_coords_A: np.ndarray, pocket: Pocket, contact_A: float = 5.0) -> float:
    """Fraction of ligand heavy atoms with a pocket heavy atom within ``contact_A`` Å."""
    from scipy.spatial import cKDTree

    if pocket.n_atoms == 0:
        return 0.0
    d, _ = cKDTree(pocket.coords_A).query(ligand_coords_A, k=1)
    return float(np.mean(d <= contact_A))


# --------------------------------------------------------------------------------------------
# Grouping by protein (for the split)
# --------------------------------------------------------------------------------------------
def sequence_identity(a: str, b: str) -> float:
    """Identical aligned positions / length of the shorter sequence (global BLOSUM62 alignment,
    gap open -10, extend -0.5, end gaps free)."""
    from Bio.Align import PairwiseAligner, substitution_matrices

    if not a or not b:
        return 0.0
    aligner = PairwiseAligner()
    aligner.mode = "global"
    aligner.substitution_matrix = substitution_matrices.load("BLOSUM62")
    aligner.open_gap_score = -10.0
    aligner.extend_gap_score = -0.5
    aligner.end_gap_score = 0.0
    aln = next(iter(aligner.align(a, b)))
    return aln.counts().identities / min(len(a), len(b))


def group_by_protein(
    chain_sequences: Mapping[str, Mapping[str, str]],
    min_identity: float = 0.4,
    min_chain_length: int = 30,
) -> list[list[str]]:
    """Cluster complexes whose pocket chains share >= ``min_identity`` sequence identity.

    ``chain_sequences`` maps complex id -> {chain: sequence}. Single linkage (union-find); chains
    shorter than ``min_chain_length`` residues are compared only by exact equality.
    Returns groups of ids, each sorted, groups sorted by their first id.
    """
    ids = sorted(chain_sequences)
    parent = {i: i for i in ids}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    cache: dict[tuple[str, str], float] = {}
    for ia, a in enumerate(ids):
        for b in ids[ia + 1 :]:
            if find(a) == find(b):
                continue
            linked = False
            for sa in chain_sequences[a].values():
                for sb in chain_sequences[b].values():
                    if min(len(sa), len(sb)) < min_chain_length:
                        linked = sa == sb
                    else:
                        key = (sa, sb) if sa <= sb else (sb, sa)
                        if key not in cache:
                            cache[key] = sequence_identity(*key)
                        linked = cache[key] >= min_identity
                    if linked:
                        break
                if linked:
                    break
            if linked:
                parent[find(b)] = find(a)
    groups: dict[str, list[str]] = {}
    for i in ids:
        groups.setdefault(find(i), []).append(i)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def split_groups(
    groups: Sequence[Sequence[str]],
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    min_val: int = 2,
) -> dict[str, str]:
    """Assign whole groups to val / test / train: id -> split.

    Groups are shuffled with ``seed`` and dealt to val until it holds at least
    max(``min_val``, round(val_fraction * n)) complexes (when ``val_fraction`` > 0), then to test
    likewise (without a minimum), the rest to train. Train is never left empty when there is
    more than one group.
    """
    n = sum(len(g) for g in groups)
    rng = np.random.default_rng(seed)
    order = [list(groups[i]) for i in rng.permutation(len(groups))]
    targets = {
        "val": max(min_val, round(val_fraction * n)) if val_fraction > 0 else 0,
        "test": round(test_fraction * n) if test_fraction > 0 else 0,
    }
    counts = {"train": 0, "val": 0, "test": 0}
    placed: list[tuple[str, list[str]]] = []
    for g in order:
        name = next((s for s in ("val", "test") if counts[s] < targets[s]), "train")
        counts[name] += len(g)
        placed.append((name, g))
    if counts["train"] == 0 and len(placed) > 1:
        # never leave train empty: hand the smallest non-train group back
        k = min(range(len(placed)), key=lambda j: len(placed[j][1]))
        placed[k] = ("train", placed[k][1])
    return {i: name for name, g in placed for i in g}


# --------------------------------------------------------------------------------------------
# Processing a folder of complexes
# --------------------------------------------------------------------------------------------
@dataclass
class Complex:
    id: str
    protein_pdb: Path
    ligand_sdf: Path


def find_complexes(src_dir: str | os.PathLike) -> tuple[list[Complex], list[dict[str, str]]]:
    """Complexes under ``src_dir``: each sub-folder with ``protein.pdb`` and ``ligand.sdf``
    (or exactly one ``*.pdb`` and one ``*.sdf``). Folders that have neither layout are returned
    as skipped with the reason."""
    src = Path(src_dir)
    if not src.is_dir():
        raise InputFileError(f"data folder not found: {src}")
    found, skipped = [], []
    for sub in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        pdb, sdf = sub / "protein.pdb", sub / "ligand.sdf"
        if not pdb.is_file():
            cands = sorted(sub.glob("*.pdb"))
            pdb = cands[0] if len(cands) == 1 else pdb
        if not sdf.is_file():
            cands = sorted(sub.glob("*.sdf"))
            sdf = cands[0] if len(cands) == 1 else sdf
        if pdb.is_file() and sdf.is_file():
            found.append(Complex(sub.name, pdb, sdf))
        else:
            missing = [n for n, p in (("protein PDB", pdb), ("ligand SDF", sdf)) if not p.is_file()]
            skipped.append(
                {"id": sub.name, "stage": "find", "reason": f"no {' and no '.join(missing)} found"}
            )
    return found, skipped


@dataclass
class ProcessedComplex:
    id: str
    ligand: Ligand
    pocket: Pocket
    contact_fraction: float
    embedding: np.ndarray | None = None


def process_complex(
    cx: Complex,
    cutoff_A: float = 8.0,
    contact_A: float = 5.0,
    min_contact_fraction: float = 0.5,
) -> ProcessedComplex:
    """Ligand + pocket of one complex; raises UserError with the reason when it must be skipped."""
    ligand = ligand_from_sdf(cx.ligand_sdf)
    pocket = pocket_from_pdb(
        cx.protein_pdb, ligand_coords_A=ligand.coords_A, cutoff_A=cutoff_A, pocket_id=cx.id
    )
    frac = contact_fraction(ligand.coords_A, pocket, contact_A)
    if frac < min_contact_fraction:
        raise InvalidInputError(
            f"ligand far from the protein: only {frac:.0%} of its heavy atoms lie within "
            f"{contact_A} Å of a pocket heavy atom (minimum {min_contact_fraction:.0%})"
        )
    return ProcessedComplex(cx.id, ligand, pocket, frac)


def joint_size_histogram(
    n_lig: Sequence[int], n_pocket: Sequence[int], smooth_sigma: float | None = 1.0
) -> np.ndarray:
    """Joint histogram [max ligand size + 1, max pocket size + 1] of (ligand, pocket) atom counts,
    Gaussian-smoothed like DiffSBDD's ``size_distribution.npy`` (sigma in bins, constant mode)."""
    from scipy.ndimage import gaussian_filter

    hist = np.zeros((max(n_lig) + 1, max(n_pocket) + 1))
    for a, b in zip(n_lig, n_pocket):
        hist[a, b] += 1
    if smooth_sigma:
        hist = gaussian_filter(hist, sigma=smooth_sigma, order=0, mode="constant", cval=0.0,
                               truncate=4.0)
    return hist


def _stack_split(items: Sequence[ProcessedComplex]) -> dict[str, np.ndarray]:
    lig_coords = [c.ligand.coords_A.astype(np.float64) for c in items]
    pocket_coords = [c.pocket.coords_A.astype(np.float32) for c in items]
    return {
        "names": np.array([c.id for c in items], dtype=str),
        "lig_coords": np.concatenate(lig_coords) if items else np.zeros((0, 3)),
        "lig_one_hot": (np.concatenate([c.ligand.one_hot for c in items]) if items
                        else np.zeros((0, N_ELEMENTS), np.float32)),
        "lig_mask": (np.concatenate([np.full(len(x), i, np.int64) for i, x in enumerate(lig_coords)])
                     if items else np.zeros(0, np.int64)),
        "pocket_coords": (np.concatenate(pocket_coords) if items
                          else np.zeros((0, 3), np.float32)),
        "pocket_one_hot": (np.concatenate([c.pocket.one_hot for c in items]) if items
                           else np.zeros((0, N_ELEMENTS), np.float32)),
        "pocket_mask": (np.concatenate([np.full(len(x), i, np.int64)
                                        for i, x in enumerate(pocket_coords)])
                        if items else np.zeros(0, np.int64)),
    }


def sbdd_data(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """A folder of complexes or a processed folder as a preset or flag names it: relative
    names under the data root (``moltune.common.training.resolve_data``). A missing folder is
    refused with what to put there."""
    from moltune.common.training import resolve_data

    p = Path(resolve_data(path, root))
    if not p.exists():
        raise InputFileError(f"SBDD data not found: {p}; put complexes there (ID/protein.pdb + "
                             f"ID/ligand.sdf), or make a processed folder with `moltune sbdd "
                             f"process --data COMPLEXES --out {p}`, or pass --data-root DIR "
                             "or --data DIR")  # fmt: skip
    return p


def process_complexes(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: Mapping[str, str] | None = None,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    embedding: str | None = "deterministic",
    cutoff_A: float = 8.0,
    contact_A: float = 5.0,
    min_contact_fraction: float = 0.5,
    min_identity: float = 0.4,
    progress: bool = True,
) -> dict[str, Any]:
    """Process every complex of ``src_dir`` into the DiffSBDD layout under ``out_dir``.

    ``split``: optional explicit assignment {id: "train"|"val"|"test"} (missing ids: train; a
    protein group split across two splits is refused); otherwise complexes are
    grouped by protein (:func:`group_by_protein`, ``min_identity``) and whole groups are dealt to
    val / test / train (:func:`split_groups`). ``embedding``: provider spec (see
    :func:`moltune.sbdd.embeddings.make_provider`) or None for no embeddings.

    Writes (all atomically):
      ``<split>.npz``: names [B] str (complex ids), lig_coords [N,3] float64 Å, lig_one_hot [N,10]
        float32, lig_mask [N] int64 (complex index within the split), pocket_coords [M,3] float32 Å,
        pocket_one_hot [M,10] float32, pocket_mask [M] int64; coordinates in the PDB frame
        (DiffSBDD centres when loading);
      ``embeddings/<id>.npy``: [960] float32 per pocket (readable by ``precomputed:DIR``);
      ``<split>/<id>.pdb|.sdf|.txt`` for val and test (receptor, reference ligand, pocket residues);
      ``train_smiles.npy``, ``size_distribution.npy`` (train joint size histogram, smoothed);
      ``split.json``, ``skipped.json`` (every complex left out with its reason), ``summary.json``.
    Returns the summary dict.
    """
    from tqdm import tqdm

    check_number("--val-fraction", val_fraction, minimum=0, below=1)
    check_number("--test-fraction", test_fraction, minimum=0, below=1)
    check_number("--val-fraction + --test-fraction", val_fraction + test_fraction, below=1)
    check_number("--cutoff", cutoff_A, above=0)
    check_number("contact distance", contact_A, above=0)
    check_number("--min-contact-fraction", min_contact_fraction, minimum=0, maximum=1)
    check_number("--min-identity", min_identity, minimum=0, maximum=1)
    final = check_output_dir(out_dir)
    if final.is_dir() and any(final.iterdir()) and not (final / "summary.json").is_file():
        raise InvalidInputError(f"--out {final} holds files that are not a processed data set; "
                                "choose a new or empty folder (nothing is overwritten)")
    if not Path(src_dir).is_dir():
        raise InputFileError(f"complexes folder not found: {src_dir}")
    complexes, skipped = find_complexes(src_dir)

    provider = None
    if embedding:
        from moltune.sbdd.embeddings import make_provider

        provider = make_provider(embedding)

    done: list[ProcessedComplex] = []
    for cx in tqdm(complexes, desc="complexes", disable=not progress):
        try:
            pc = process_complex(cx, cutoff_A, contact_A, min_contact_fraction)
            if provider is not None:
                pc.embedding = np.asarray(provider.embed(pc.pocket), dtype=np.float32)
        except UserError as exc:
            skipped.append({"id": cx.id, "stage": "process", "reason": str(exc)})
            log.warning("skipping %s: %s", cx.id, exc)
            continue
        except Exception as exc:  # noqa: BLE001 - any failure of one complex is logged, not fatal
            skipped.append(
                {"id": cx.id, "stage": "process", "reason": f"{type(exc).__name__}: {exc}"}
            )
            log.warning("skipping %s: %s: %s", cx.id, type(exc).__name__, exc)
            continue
        done.append(pc)
    if not done:
        reasons = "; ".join(f"{x['id']}: {x['reason']}" for x in skipped[:3])
        raise InvalidInputError(f"no complex of {src_dir} could be processed ({reasons}"
                                f"{', ...' if len(skipped) > 3 else ''})")

    by_id = {c.id: c for c in done}
    groups = group_by_protein({c.id: c.pocket.chain_sequences for c in done}, min_identity)
    if split is not None:
        bad = {k: v for k, v in split.items() if v not in SPLITS}
        if bad:
            raise InvalidInputError(f"unknown split name(s) {bad}; use train, val or test")
        unknown = sorted(set(split) - set(by_id))
        if unknown:
            raise InvalidInputError(f"explicit split names complexes {unknown} that were not "
                                    f"processed (found: {sorted(by_id)}; see skipped.json)")
        assignment = {i: split.get(i, "train") for i in by_id}
        for g in groups:  # an explicit split is still a split by protein
            if len({assignment[i] for i in g}) > 1:
                raise InvalidInputError(
                    f"explicit split separates one protein group {g} "
                    f"({ {i: assignment[i] for i in g} }); put the whole group in one split")
    else:
        assignment = split_groups(groups, val_fraction, test_fraction, seed)

    if not any(assignment[i] == "train" for i in by_id):
        raise InvalidInputError(
            f"the training split would be empty ({len(by_id)} usable complex(es), "
            f"{len(groups)} protein group(s)); add complexes or lower --val/test-fraction")
    # Written into a staging folder that replaces ``final`` at the end: an older processing's
    # files never linger, and an interrupted run leaves the old folder as it was.
    final.parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        summary = _write_processed(out, src_dir, complexes, skipped, done, by_id, groups,
                                   assignment, split, seed, val_fraction, test_fraction,
                                   min_identity, embedding, cutoff_A, contact_A,
                                   min_contact_fraction)
        # the permissions the folder had, or those a plain mkdir gives
        os.chmod(out, stat.S_IMODE(final.stat().st_mode) if final.exists()
                 else 0o777 & ~current_umask())
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(out, final)
            shutil.rmtree(old)
        else:
            os.replace(out, final)
    finally:
        if out.exists():
            shutil.rmtree(out)
    return summary


def _write_processed(out, src_dir, complexes, skipped, done, by_id, groups, assignment, split,
                     seed, val_fraction, test_fraction, min_identity, embedding, cutoff_A,
                     contact_A, min_contact_fraction) -> dict[str, Any]:
    """Write the processed layout of :func:`process_complexes` into ``out``; the summary."""
    summary_splits: dict[str, list[str]] = {}
    for name in SPLITS:
        items = [by_id[i] for i in sorted(by_id) if assignment[i] == name]
        summary_splits[name] = [c.id for c in items]
        if not items and name == "test":
            continue
        save_npz(out / f"{name}.npz", **_stack_split(items))
        if name in ("val", "test"):
            for c in items:
                d = out / name
                d.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(c.pocket.pdb_path, d / f"{c.id}.pdb")
                src_sdf = next(x.ligand_sdf for x in complexes if x.id == c.id)
                shutil.copyfile(src_sdf, d / f"{c.id}.sdf")
                write_text(d / f"{c.id}.txt", " ".join(c.pocket.residue_ids) + "\n")
    for c in done:
        if c.embedding is not None:
            save_npy(out / "embeddings" / f"{c.id}.npy", c.embedding)

    train = [by_id[i] for i in summary_splits["train"]]
    if train:
        save_npy(out / "train_smiles.npy",
                 np.array([c.ligand.smiles for c in train if c.ligand.smiles], dtype=str))
        save_npy(out / "size_distribution.npy", joint_size_histogram(
            [c.ligand.n_atoms for c in train], [c.pocket.n_atoms for c in train]))

    write_json(out / "skipped.json", skipped)
    write_json(out / "split.json", {
        "assignment": {i: assignment[i] for i in sorted(assignment)},
        "groups": groups,
        "method": "explicit" if split is not None else
        f"by protein: single-linkage groups at >= {min_identity:.0%} sequence identity of "
        f"pocket chains; seed {seed}, val_fraction {val_fraction}, test_fraction {test_fraction}",
    })
    summary = {
        "src_dir": str(src_dir),
        "n_found": len(complexes) + sum(1 for s in skipped if s["stage"] == "find"),
        "n_processed": len(done),
        "n_skipped": len(skipped),
        "splits": summary_splits,
        "skipped": skipped,
        "embedding": embedding,
        "embedding_dim": int(done[0].embedding.shape[0]) if done[0].embedding is not None else None,
        "cutoff_A": cutoff_A,
        "contact_A": contact_A,
        "min_contact_fraction": min_contact_fraction,
        "elements": list(ELEMENTS),
        "npz_keys": list(NPZ_KEYS),
        "per_complex": {
            c.id: {"n_ligand_atoms": c.ligand.n_atoms, "n_pocket_atoms": c.pocket.n_atoms,
                   "n_pocket_residues": c.pocket.n_residues,
                   "contact_fraction": round(c.contact_fraction, 3), "smiles": c.ligand.smiles,
                   "split": assignment[c.id]}
            for c in done
        },
    }
    write_json(out / "summary.json", summary)
    return summary


def load_processed_split(out_dir: str | os.PathLike, split: str) -> list[dict[str, Any]]:
    """Read ``<split>.npz`` back into one dict per complex (DiffSBDD keys, un-centred, Å) plus
    ``embedding`` ([960] float32 or None when ``embeddings/<id>.npy`` is absent)."""
    out = Path(out_dir)
    path = out / f"{split}.npz"
    if not path.is_file():
        raise InputFileError(f"processed split not found: {path}")
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    missing = [k for k in NPZ_KEYS if k not in data]
    if missing:
        raise InvalidInputError(f"{path} lacks key(s) {missing}")
    items = []
    for i, name in enumerate(data["names"]):
        lm, pm = data["lig_mask"] == i, data["pocket_mask"] == i
        emb_path = out / "embeddings" / f"{name}.npy"
        items.append({
            "name": str(name),
            "lig_coords": data["lig_coords"][lm],
            "lig_one_hot": data["lig_one_hot"][lm],
            "pocket_coords": data["pocket_coords"][pm],
            "pocket_one_hot": data["pocket_one_hot"][pm],
            "embedding": np.load(emb_path) if emb_path.is_file() else None,
        })
    return items


def read_skipped(out_dir: str | os.PathLike) -> list[dict[str, str]]:
    return json.loads((Path(out_dir) / "skipped.json").read_text())
