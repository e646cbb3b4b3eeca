"""Per-pocket embeddings for FiLM conditioning: one interface, several providers.

``make_provider(spec).embed(pocket) -> np.ndarray float32 [960]``, with ``spec``:

- ``"deterministic"`` (or ``"deterministic:SEED"``): an offline **stand-in** computed from the
  pocket's residues and atoms (composition and physicochemical statistics, randomly projected
  with a fixed seed to 960 values, L2-normalised). It is deterministic, rotation-invariant and
  differs between pockets, which is what tests and users without ESM-C weights need. It makes
  **no biological claim**: it is not a protein language model.
- ``"precomputed:DIR"``: reads ``DIR/<pocket_id>.npy`` (or ``.npz`` with one array or an
  ``embedding`` key), e.g. the ``embeddings/`` folder that ``moltune sbdd process`` writes.
- ``"esmc:PATH"``: ESM-C 300M through the ``esm`` package, weights read from a local file or
  folder (never downloaded). Each chain that holds pocket residues is embedded as a whole; the
  per-residue embeddings (960) of the pocket residues are averaged.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from moltune.common.errors import InputFileError, InvalidInputError, UserError
from moltune.sbdd.vocab import N_ELEMENTS

EMBEDDING_DIM = 960  # ESM-C 300M hidden size

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
_AA_INDEX = {a: i for i, a in enumerate(AMINO_ACIDS)}
# Kyte-Doolittle hydropathy; side-chain charge at pH 7; residue volume (Å^3, Zamyatnin 1972);
# polar / aromatic flags. Used only to make the stand-in embedding depend on pocket chemistry.
_HYDROPATHY = dict(zip(AMINO_ACIDS, (1.8, 2.5, -3.5, -3.5, 2.8, -0.4, -3.2, 4.5, -3.9, 3.8, 1.9,
                                     -3.5, -1.6, -3.5, -4.5, -0.8, -0.7, 4.2, -0.9, -1.3)))
_CHARGE = {a: 0.0 for a in AMINO_ACIDS} | {"D": -1.0, "E": -1.0, "K": 1.0, "R": 1.0, "H": 0.1}
_VOLUME = dict(zip(AMINO_ACIDS, (88.6, 108.5, 111.1, 138.4, 189.9, 60.1, 153.2, 166.7, 168.6,
                                 166.7, 162.9, 114.1, 112.7, 143.8, 173.4, 89.0, 116.1, 140.0,
                                 227.8, 193.6)))
_POLAR = set("CDEHKNQRSTWY")
_AROMATIC = set("FHWY")


class EmbeddingProvider(Protocol):
    """Anything that maps a :class:`moltune.sbdd.data.Pocket` to a [dim] float32 vector."""

    name: str
    dim: int

    def embed(self, pocket: Any) -> np.ndarray: ...


def _as_embedding(x: Any, dim: int, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32).reshape(-1)
    if arr.shape[0] != dim:
        raise InvalidInputError(f"{what}: embedding has {arr.shape[0]} values, expected {dim}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{what}: embedding has non-finite values")
    return arr


# --------------------------------------------------------------------------------------------
class DeterministicEmbedding:
    """Offline stand-in: residue/atom statistics -> fixed random projection -> unit vector.

    Features (all invariant to rotation, translation and pocket id): amino-acid composition (20),
    composition of sequence-adjacent residue pairs in pocket order (400), mean and std of
    hydropathy, charge, volume, polar and aromatic flags (10), pocket element composition (10),
    log residue / atom counts (2), radius of gyration and a histogram of inter-residue centroid
    distances (1 + 8). They are standardised by fixed scales, multiplied by a Gaussian matrix
    drawn from ``numpy.random.default_rng(seed)`` and L2-normalised.
    """

    N_FEATURES = 20 + 400 + 10 + N_ELEMENTS + 2 + 1 + 8

    def __init__(self, dim: int = EMBEDDING_DIM, seed: int = 20240601):
        self.dim = int(dim)
        self.seed = int(seed)
        self.name = f"deterministic:{self.seed}"
        rng = np.random.default_rng(self.seed)
        self._proj = rng.standard_normal((self.N_FEATURES, self.dim)) / np.sqrt(self.N_FEATURES)
        self._bias = rng.standard_normal(self.N_FEATURES) * 0.05

    def features(self, pocket: Any) -> np.ndarray:
        seq = str(pocket.sequence)
        if not seq:
            raise InvalidInputError("pocket has no residues")
        unknown = sorted(set(seq) - set(AMINO_ACIDS))
        if unknown:
            raise InvalidInputError(f"pocket sequence has non-standard letters {unknown}")
        n = len(seq)
        comp = np.zeros(20)
        for a in seq:
            comp[_AA_INDEX[a]] += 1
        pairs = np.zeros(400)
        for a, b in itertools.pairwise(seq):
            pairs[_AA_INDEX[a] * 20 + _AA_INDEX[b]] += 1
        props = np.array([[_HYDROPATHY[a] / 4.5, _CHARGE[a], _VOLUME[a] / 100.0,
                           float(a in _POLAR), float(a in _AROMATIC)] for a in seq])
        one_hot = np.asarray(pocket.one_hot, dtype=np.float64)
        coords = np.asarray(pocket.coords_A, dtype=np.float64)
        elem = one_hot.mean(axis=0) if len(one_hot) else np.zeros(N_ELEMENTS)
        rg = float(np.sqrt(((coords - coords.mean(0)) ** 2).sum(1).mean())) if len(coords) else 0.0
        res_idx = np.asarray(getattr(pocket, "atom_residue_index", []), dtype=np.int64)
        if len(res_idx) == len(coords) and len(coords):
            cents = np.stack([coords[res_idx == i].mean(0) for i in np.unique(res_idx)])
        else:
            cents = coords
        if len(cents) > 1:
            d = np.sqrt(((cents[:, None] - cents[None]) ** 2).sum(-1))[np.triu_indices(len(cents), 1)]
            hist = np.histogram(d, bins=8, range=(0.0, 24.0))[0] / len(d)
        else:
            hist = np.zeros(8)
        feats = np.concatenate([
            comp / n * 5.0,
            pairs / max(n - 1, 1) * 20.0,
            props.mean(0), props.std(0),
            elem * 3.0,
            [np.log1p(n) / 4.0, np.log1p(len(coords)) / 6.0],
            [rg / 10.0],
            hist * 3.0,
        ])
        return feats

    def embed(self, pocket: Any) -> np.ndarray:
        z = (self.features(pocket) + self._bias) @ self._proj
        return (z / np.linalg.norm(z)).astype(np.float32)


# --------------------------------------------------------------------------------------------
class PrecomputedEmbedding:
    """Reads ``DIR/<pocket_id>.npy`` or ``DIR/<pocket_id>.npz`` (one array, or key ``embedding``)."""

    def __init__(self, directory: str | os.PathLike, dim: int = EMBEDDING_DIM):
        self.dir = Path(directory)
        self.dim = int(dim)
        self.name = f"precomputed:{self.dir}"
        if not self.dir.is_dir():
            raise InputFileError(f"precomputed embedding folder not found: {self.dir}")

    def embed_id(self, pocket_id: str) -> np.ndarray:
        npy, npz = self.dir / f"{pocket_id}.npy", self.dir / f"{pocket_id}.npz"
        if npy.is_file():
            return _as_embedding(np.load(npy, allow_pickle=False), self.dim, str(npy))
        if npz.is_file():
            with np.load(npz, allow_pickle=False) as f:
                keys = list(f.files)
                if "embedding" in keys:
                    arr = f["embedding"]
                elif len(keys) == 1:
                    arr = f[keys[0]]
                else:
                    raise InvalidInputError(
                        f"{npz} holds arrays {keys}: name the pocket embedding 'embedding'")
            return _as_embedding(arr, self.dim, str(npz))
        n_files = len(list(self.dir.glob("*.np[yz]")))
        raise InputFileError(
            f"no precomputed embedding for pocket '{pocket_id}' in {self.dir} (looked for "
            f"{npy.name} and {npz.name}; the folder has {n_files} embedding file(s))"
        )

    def embed(self, pocket: Any) -> np.ndarray:
        return self.embed_id(str(pocket.pocket_id))


# --------------------------------------------------------------------------------------------
ESMC_HOW_TO = (
    "ESM-C 300M weights are not downloaded by moltune. On a machine with network access: "
    "`pip install esm` (EvolutionaryScale, ESM-C open-model license), download "
    "'data/weights/esmc_300m_2024_12_v0.pth' from the Hugging Face repository "
    "EvolutionaryScale/esmc-300m-2024-12, copy it here and pass --embedding esmc:/path/to/"
    "esmc_300m_2024_12_v0.pth (or the folder that holds data/weights/). Without the weights use "
    "--embedding deterministic (a stand-in) or precomputed:DIR."
)


ESMC_HEAD_DIM = 64  # every ESM-C size (300M: 960 = 15 x 64, 600M: 1152 = 18 x 64)


def esmc_shape(state: dict) -> tuple[int, int]:
    """(d_model, n_layers) of an ESM-C state dict, read from its tensors."""
    d_model = int(state["embed.weight"].shape[1])
    blocks = {int(k.split(".")[2]) for k in state if k.startswith("transformer.blocks.")}
    if not blocks or d_model % ESMC_HEAD_DIM:
        raise ValueError(f"no transformer blocks or d_model {d_model} not a multiple of "
                         f"{ESMC_HEAD_DIM}")
    return d_model, max(blocks) + 1


def _find_esmc_weights(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for cand in (path / "data" / "weights" / "esmc_300m_2024_12_v0.pth",
                     path / "esmc_300m_2024_12_v0.pth"):
            if cand.is_file():
                return cand
        pths = sorted(path.rglob("*.pth"))
        if len(pths) == 1:
            return pths[0]
        raise InputFileError(
            f"no ESM-C weights file (esmc_300m_2024_12_v0.pth) under {path}. {ESMC_HOW_TO}")
    raise InputFileError(f"ESM-C weights not found at {path}. {ESMC_HOW_TO}")


class ESMCEmbedding:
    """ESM-C from local weights (size and layer count read from them; 300M gives 960 values);
    mean of the pocket residues' per-residue embeddings, each chain embedded with its full
    sequence as context (chunks of ``max_len`` residues), through esm's public encode/logits."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", max_len: int = 2000):
        self.path = Path(path)
        self.weights = _find_esmc_weights(self.path)  # fails clearly before importing esm
        self.dim = EMBEDDING_DIM
        self.device = device
        self.max_len = int(max_len)
        self.name = f"esmc:{self.weights}"
        self._model = None

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        try:
            import torch
            from esm.models.esmc import ESMC
            from esm.tokenization import get_esmc_model_tokenizers
        except ImportError as exc:
            raise UserError(
                f"the 'esm' package is needed for ESM-C embeddings ({exc}); install it with "
                "`pip install 'moltune[esm]'`"
            ) from exc
        try:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
            d_model, n_layers = esmc_shape(state)
            model = ESMC(d_model=d_model, n_heads=d_model // ESMC_HEAD_DIM, n_layers=n_layers,
                         tokenizer=get_esmc_model_tokenizers(), use_flash_attn=False)
            model.load_state_dict(state)
        except Exception as exc:
            raise InvalidInputError(f"{self.weights} is not an ESM-C state dict: {exc}") from exc
        self.dim = d_model
        self._model = model.to(self.device).eval().float()
        return self._model

    def residue_embeddings(self, sequence: str) -> np.ndarray:
        """[len(sequence), d_model] float32 per-residue embeddings (960 for ESM-C 300M)."""
        from esm.sdk.api import ESMProtein, LogitsConfig

        model = self._load()
        config = LogitsConfig(sequence=False, return_embeddings=True)
        out = []
        for start in range(0, len(sequence), self.max_len):
            chunk = sequence[start:start + self.max_len]
            emb = model.logits(model.encode(ESMProtein(sequence=chunk)), config).embeddings
            out.append(emb[0, 1:-1].float().cpu().numpy())  # drop the BOS/EOS positions
        return np.concatenate(out)

    def embed(self, pocket: Any) -> np.ndarray:
        chains = [rid.split(":")[0] for rid in pocket.residue_ids]
        per_chain = {c: self.residue_embeddings(s) for c, s in pocket.chain_sequences.items()
                     if c in set(chains)}
        rows = [per_chain[c][pos] for c, pos in zip(chains, pocket.residue_chain_positions)]
        if not rows:
            raise InvalidInputError("pocket has no residues to embed")
        return _as_embedding(np.mean(rows, axis=0), self.dim, self.name)


# --------------------------------------------------------------------------------------------
def make_provider(spec: str) -> EmbeddingProvider:
    """``"deterministic"``, ``"deterministic:SEED"``, ``"precomputed:DIR"`` or ``"esmc:PATH"``."""
    kind, _, arg = str(spec).partition(":")
    kind = kind.strip().lower()
    if kind == "deterministic":
        return DeterministicEmbedding(seed=int(arg)) if arg else DeterministicEmbedding()
    if kind == "precomputed":
        if not arg:
            raise InvalidInputError("precomputed embeddings need a folder: precomputed:DIR")
        return PrecomputedEmbedding(arg)
    if kind == "esmc":
        if not arg:
            raise InvalidInputError(f"ESM-C needs a weights path: esmc:PATH. {ESMC_HOW_TO}")
        return ESMCEmbedding(arg)
    raise InvalidInputError(
        f"unknown embedding spec {spec!r}: use deterministic, precomputed:DIR or esmc:PATH")
