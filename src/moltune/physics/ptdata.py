"""Parallel-tempering data on disk (written by ``moltune pt simulate``) and its loader.

Layout of a PT directory::

    DIR/
      topology.pdb      the peptide (atom order of every coordinate array)
      metadata.json     temperatures_K, force field, solvent, timestep_fs, friction_per_ps,
                        save/swap/equilibration/checkpoint intervals (ps), seed, package versions,
                        n_frames, complete, swap statistics
      pt_data.npz       the data, written once the run is complete:
                          temperatures_K  [K]           float64, ascending
                          xyz_nm          [K, F, N, 3]  float32, frames per *temperature*
                          energy_kjmol    [K, F]        float64, potential energy of each frame
                          replica_index   [K, F]        int32, which replica (walker) the frame is
                          time_ps         [F]           float64, production time of each frame
                          swap_attempts   [K-1]         int64, per neighbouring pair (k, k+1)
                          swap_accepts    [K-1]         int64
                          swap_time_ps    [E]           float64, time of each production swap event
                          swap_accepted   [E, K-1]      int8, 1 accepted, 0 rejected, -1 not tried
      chunks/chunk_NNNNNN.npz   the per-frame and per-swap arrays of one checkpoint interval
                        (``xyz_nm``, ``energy_kjmol``, ``replica_index``, ``time_ps``,
                        ``swap_time_ps``, ``swap_accepted``); kept after completion so a run can
                        be extended with a longer ``--time-ns``
      state.npz         checkpoint to resume from (positions, velocities, replica permutation,
                        swap RNG state, step counter, OpenMM context checkpoints)

Every file is written atomically; a chunk is written before the state that counts it, so a run
interrupted at any point resumes without losing or duplicating frames.  ``load_pt_data`` reads
``pt_data.npz`` or, for a run still going (or interrupted), the chunks the state file counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from moltune.common.errors import InputFileError, InvalidInputError

TOPOLOGY_FILE = "topology.pdb"
METADATA_FILE = "metadata.json"
DATA_FILE = "pt_data.npz"
STATE_FILE = "state.npz"
CHUNK_DIR = "chunks"
FRAME_KEYS = ("xyz_nm", "energy_kjmol", "replica_index", "time_ps")
SWAP_KEYS = ("swap_time_ps", "swap_accepted")
AXIS = {"xyz_nm": 1, "energy_kjmol": 1, "replica_index": 1, "time_ps": 0, "swap_time_ps": 0,
        "swap_accepted": 0}  # fmt: skip


def chunk_path(directory: Path, index: int) -> Path:
    return Path(directory) / CHUNK_DIR / f"chunk_{index:06d}.npz"


@dataclass
class PTData:
    """Parallel-tempering samples, per temperature (coordinates in nm, energies in kJ/mol)."""

    directory: Path
    temperatures_K: np.ndarray
    xyz_nm: list[np.ndarray]
    energy_kjmol: list[np.ndarray]
    replica_index: list[np.ndarray]
    time_ps: np.ndarray
    swap_attempts: np.ndarray
    swap_accepts: np.ndarray
    swap_time_ps: np.ndarray
    swap_accepted: np.ndarray
    metadata: dict

    @property
    def topology_pdb(self) -> Path:
        return self.directory / TOPOLOGY_FILE

    @cached_property
    def topology(self):
        """OpenMM topology of the peptide."""
        from openmm import app

        return app.PDBFile(str(self.topology_pdb)).topology

    @cached_property
    def md_topology(self):
        """mdtraj topology of the peptide."""
        import mdtraj

        return mdtraj.load_topology(str(self.topology_pdb))

    @property
    def n_frames(self) -> int:
        return int(self.time_ps.shape[0])

    @property
    def swap_acceptance(self) -> np.ndarray:
        """Observed acceptance per neighbouring pair (NaN where nothing was attempted)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.swap_accepts / self.swap_attempts


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:
        raise InvalidInputError(f"cannot read PT data file {str(path)!r}: {exc}") from exc


def load_pt_data(directory: str | Path) -> PTData:
    """Load a PT directory written by ``moltune pt simulate`` (complete or partial run)."""
    d = Path(directory)
    if not d.is_dir():
        what = "is a file, not a folder" if d.exists() else "does not exist"
        raise InputFileError(f"PT data directory {str(d)!r} {what}")
    for name in (TOPOLOGY_FILE, METADATA_FILE):
        if not (d / name).is_file():
            raise InputFileError(f"{str(d)!r} is not a PT data directory: {name} is missing")
    try:
        metadata = json.loads((d / METADATA_FILE).read_text())
        temps = np.asarray(metadata["temperatures_K"], dtype=np.float64)
    except Exception as exc:
        raise InvalidInputError(
            f"{str(d / METADATA_FILE)!r} is not readable PT metadata ({type(exc).__name__}: "
            f"{exc}); the run is damaged or not a moltune PT run"
        ) from exc
    if (d / DATA_FILE).is_file() and not _extended_since_consolidation(d):
        z = _read_npz(d / DATA_FILE)
        frames = {k: z[k] for k in FRAME_KEYS + SWAP_KEYS}
        attempts, accepts = z["swap_attempts"], z["swap_accepts"]
    elif (d / STATE_FILE).is_file():
        state = _read_npz(d / STATE_FILE)
        frames = read_chunks(d, int(state["n_chunks"]), temps)
        attempts, accepts = state["swap_attempts"], state["swap_accepts"]
    else:
        raise InputFileError(
            f"{str(d)!r} holds no PT data yet (neither {DATA_FILE} nor {STATE_FILE})"
        )
    k = len(temps)
    if frames["xyz_nm"].shape[0] != k:
        raise InvalidInputError(
            f"{str(d)!r}: coordinates hold {frames['xyz_nm'].shape[0]} temperatures, "
            f"metadata lists {k}"
        )
    return PTData(
        directory=d,
        temperatures_K=temps,
        xyz_nm=[np.asarray(frames["xyz_nm"][i], dtype=np.float32) for i in range(k)],
        energy_kjmol=[np.asarray(frames["energy_kjmol"][i], dtype=np.float64) for i in range(k)],
        replica_index=[np.asarray(frames["replica_index"][i]) for i in range(k)],
        time_ps=np.asarray(frames["time_ps"], dtype=np.float64),
        swap_attempts=np.asarray(attempts, dtype=np.int64),
        swap_accepts=np.asarray(accepts, dtype=np.int64),
        swap_time_ps=np.asarray(frames["swap_time_ps"], dtype=np.float64),
        swap_accepted=np.asarray(frames["swap_accepted"], dtype=np.int8),
        metadata=metadata,
    )


def combine_pt_data(runs: list[PTData]) -> PTData:
    """Frames of several PT runs of one system and ladder, concatenated per temperature.

    For training on more independent samples (for example runs with different seeds). The runs
    must share the temperatures and the atoms (elements in order); topology and metadata are the
    first run's. Swap records and times are concatenated as they are (times restart per run).
    """
    if not runs:
        raise InvalidInputError("combine_pt_data: no PT runs given")
    first = runs[0]
    elements = [a.element.symbol for a in first.topology.atoms()]
    for other in runs[1:]:
        if not np.array_equal(other.temperatures_K, first.temperatures_K):
            raise InvalidInputError(
                f"{other.directory} has temperatures {other.temperatures_K.tolist()} K, "
                f"{first.directory} has {first.temperatures_K.tolist()} K: cannot combine"
            )
        if [a.element.symbol for a in other.topology.atoms()] != elements:
            raise InvalidInputError(
                f"{other.directory} and {first.directory} hold different molecules "
                f"(atoms differ): cannot combine"
            )
    k = len(first.temperatures_K)

    def cat(attr: str) -> list[np.ndarray]:
        return [np.concatenate([getattr(r, attr)[i] for r in runs]) for i in range(k)]

    return PTData(
        directory=first.directory,
        temperatures_K=first.temperatures_K,
        xyz_nm=cat("xyz_nm"),
        energy_kjmol=cat("energy_kjmol"),
        replica_index=cat("replica_index"),
        time_ps=np.concatenate([r.time_ps for r in runs]),
        swap_attempts=sum(r.swap_attempts for r in runs),
        swap_accepts=sum(r.swap_accepts for r in runs),
        swap_time_ps=np.concatenate([r.swap_time_ps for r in runs]),
        swap_accepted=np.concatenate([r.swap_accepted for r in runs]),
        metadata=dict(first.metadata, combined_from=[str(r.directory) for r in runs]),
    )


def _extended_since_consolidation(d: Path) -> bool:
    """True when a run being extended has saved more frames than its pt_data.npz holds."""
    if not (d / STATE_FILE).is_file():
        return False
    try:
        with np.load(d / STATE_FILE, allow_pickle=False) as st, np.load(d / DATA_FILE) as z:
            return int(st["n_frames"]) > z["time_ps"].shape[0]
    except Exception:  # noqa: BLE001 - an unreadable state means: trust pt_data.npz
        return False


def read_chunks(directory: str | Path, n_chunks: int, temps=None) -> dict[str, np.ndarray]:
    """Concatenate the first ``n_chunks`` chunk files of a PT directory (frame and swap arrays)."""
    d = Path(directory)
    if temps is None:
        temps = json.loads((d / METADATA_FILE).read_text())["temperatures_K"]
    parts = []
    for i in range(n_chunks):
        if not chunk_path(d, i).is_file():
            raise InvalidInputError(f"{str(d)!r}: chunk {i} is missing; the run is damaged")
        parts.append(_read_npz(chunk_path(d, i)))
    return {
        k: np.concatenate([p[k] for p in parts], axis=AXIS[k]) if parts else _empty(k, temps)
        for k in FRAME_KEYS + SWAP_KEYS
    }


def _empty(key: str, temps: np.ndarray) -> np.ndarray:
    k = len(temps)
    return {
        "xyz_nm": np.zeros((k, 0, 0, 3), np.float32),
        "energy_kjmol": np.zeros((k, 0)),
        "replica_index": np.zeros((k, 0), np.int32),
        "time_ps": np.zeros(0),
        "swap_time_ps": np.zeros(0),
        "swap_accepted": np.zeros((0, max(k - 1, 0)), np.int8),
    }[key]


# ---------------------------------------------------------------------------------- statistics
def block_standard_error(x: np.ndarray, n_blocks: int = 20) -> float:
    """Standard error of the mean of a correlated series by block averaging.

    The series is cut into ``n_blocks`` contiguous blocks (blocks longer than the correlation
    time are nearly independent); SE = std(block means) / sqrt(n_blocks): one run's
    ``moltune.physics.timeseries.batch_means``. NaN when there are fewer than two blocks or the
    series is not finite.
    """
    from moltune.physics.timeseries import batch_means

    x = np.asarray(x, dtype=np.float64).ravel()
    n_blocks = min(n_blocks, len(x))
    if n_blocks < 2 or not np.all(np.isfinite(x)):
        return float("nan")
    return batch_means([x], len(x) // n_blocks).mean_error


def naive_swap_acceptance(
    u_i_kjmol: np.ndarray,
    u_j_kjmol: np.ndarray,
    t_i_K: float,
    t_j_K: float,
    max_samples: int = 3000,
) -> float:
    """Energy-overlap estimate of the plain PT swap acceptance between temperatures i and j.

    Mean of min(1, exp((beta_i - beta_j)(U_a - U_b))) over all pairs of samples a ~ T_i, b ~ T_j
    (series thinned to ``max_samples`` each).
    """
    from moltune.physics.units import beta

    ui, uj = np.asarray(u_i_kjmol, np.float64), np.asarray(u_j_kjmol, np.float64)
    ui = ui[:: max(1, len(ui) // max_samples)]
    uj = uj[:: max(1, len(uj) // max_samples)]
    log_ratio = (beta(t_i_K) - beta(t_j_K)) * (ui[:, None] - uj[None, :])
    return float(np.exp(np.minimum(log_ratio, 0.0)).mean())


def naive_swap_acceptance_error(
    u_i_kjmol: np.ndarray, u_j_kjmol: np.ndarray, t_i_K: float, t_j_K: float, n_blocks: int = 10
) -> float:
    """Block standard error of ``naive_swap_acceptance`` (block b of i paired with block b of j)."""
    n = min(len(u_i_kjmol), len(u_j_kjmol))
    n_blocks = min(n_blocks, n)
    if n_blocks < 2:
        return float("nan")
    size = n // n_blocks
    est = [
        naive_swap_acceptance(
            u_i_kjmol[b * size : (b + 1) * size], u_j_kjmol[b * size : (b + 1) * size], t_i_K, t_j_K
        )
        for b in range(n_blocks)
    ]
    return float(np.std(est, ddof=1) / np.sqrt(n_blocks))


def energy_statistics(data: PTData, n_blocks: int = 20) -> dict:
    """Per-temperature energy mean/std (+ block SE) and per-pair swap acceptances (+ SE), as a dict."""
    temps = data.temperatures_K
    per_t = []
    for t, u in zip(temps, data.energy_kjmol):
        per_t.append({
            "temperature_K": float(t),
            "n_frames": len(u),
            "mean_kjmol": float(u.mean()) if len(u) else float("nan"),
            "std_kjmol": float(u.std(ddof=1)) if len(u) > 1 else float("nan"),
            "mean_se_kjmol": block_standard_error(u, n_blocks),
        })  # fmt: skip
    pairs = []
    for i in range(len(temps) - 1):
        tried = data.swap_accepted[:, i] if len(data.swap_accepted) else np.zeros(0)
        tried = tried[tried >= 0].astype(np.float64)
        u_i, u_j = data.energy_kjmol[i], data.energy_kjmol[i + 1]
        pairs.append({
            "pair_K": [float(temps[i]), float(temps[i + 1])],
            "attempts": int(data.swap_attempts[i]),
            "accepts": int(data.swap_accepts[i]),
            "observed_acceptance": float(tried.mean()) if len(tried) else float("nan"),
            "observed_acceptance_se": block_standard_error(tried, n_blocks),
            "overlap_acceptance": naive_swap_acceptance(u_i, u_j, temps[i], temps[i + 1])
            if len(u_i) and len(u_j) else float("nan"),
            "overlap_acceptance_se": naive_swap_acceptance_error(u_i, u_j, temps[i], temps[i + 1]),
        })  # fmt: skip
    out = {"temperatures": per_t, "pairs": pairs, "n_frames": data.n_frames}
    if len(temps) > 2:
        u_lo, u_hi = data.energy_kjmol[0], data.energy_kjmol[-1]
        out["overlap_acceptance_lowest_highest"] = (
            naive_swap_acceptance(u_lo, u_hi, temps[0], temps[-1]) if len(u_lo) else float("nan")
        )
    return out
