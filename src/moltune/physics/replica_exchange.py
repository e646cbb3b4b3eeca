"""Parallel tempering (replica exchange over temperatures) with OpenMM.

One OpenMM context per temperature (``LangevinMiddleIntegrator``, default 1 fs, friction 1/ps, no
constraints, the project force field).  Every ``swap_interval_ps`` a swap is attempted between
neighbouring temperatures, alternating the even pairs (0-1, 2-3, ...) and the odd pairs (1-2, ...);
it is accepted with the Metropolis probability ``min(1, exp((beta_i - beta_j)(U_i - U_j)))`` on the
potential energies, and the exchanged configurations keep their momenta up to the rescaling
``v * sqrt(T_new / T_old)``, so no further acceptance factor arises.  Context k always runs at
temperature k; configurations move between contexts.

Replicas run in this process (fastest for a few dozen atoms) or, with ``workers > 0``, in that many
worker processes that each own a subset of the contexts.  The run writes the layout documented in
``moltune.physics.ptdata`` and checkpoints every ``checkpoint_interval_ps``: the data chunk first,
then the state (positions, velocities, replica permutation, swap RNG state, step counter and the
OpenMM context checkpoints, which hold the Langevin RNG state).  Resuming from the state therefore
continues the run exactly as if it had never stopped: no frame lost, none duplicated.

Swap move hook. ``simulate(..., swap_move=...)`` replaces the plain Metropolis swap by any
callable with the :class:`SwapMove` signature (``moltune.flow.pt_sampler`` swaps through a
transport flow this way); the default, :func:`plain_swap_move`, is the plain swap above.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from openmm import app

from moltune.common.errors import InvalidInputError, UserError, check_output_dir
from moltune.common.io import save_npz, write_json
from moltune.physics.ptdata import (
    CHUNK_DIR,
    DATA_FILE,
    FRAME_KEYS,
    METADATA_FILE,
    STATE_FILE,
    SWAP_KEYS,
    TOPOLOGY_FILE,
    chunk_path,
)
from moltune.physics.units import beta

log = logging.getLogger(__name__)

# Settings that define the trajectory: a resumed run must use the same ones.
TRAJECTORY_KEYS = (
    "temperatures_K",
    "save_interval_ps",
    "swap_interval_ps",
    "equilibration_ps",
    "checkpoint_interval_ps",
    "timestep_fs",
    "friction_per_ps",
    "seed",
    "solvent",
)


@dataclass
class PTConfig:
    """Parallel-tempering settings (temperatures in K, times in ps unless named ns/fs)."""

    temperatures_K: list[float] = field(default_factory=lambda: [300.0, 450.0, 670.0, 1000.0])
    time_ns: float = 1.0
    save_interval_ps: float = 1.0
    swap_interval_ps: float = 0.1
    equilibration_ps: float = 10.0
    checkpoint_interval_ps: float = 50.0
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0
    seed: int = 0
    solvent: str = "obc2"
    workers: int = 0
    threads: int = 1
    platform: str = "CPU"

    def __post_init__(self) -> None:
        self.temperatures_K = [float(t) for t in self.temperatures_K]
        t = self.temperatures_K
        if not t or any(not math.isfinite(x) or x <= 0 for x in t):
            raise InvalidInputError(f"temperatures must be positive numbers in K, got {t}")
        if any(b <= a for a, b in itertools.pairwise(t)):
            raise InvalidInputError(f"temperatures must be strictly ascending, got {t}")
        if self.time_ns <= 0:
            raise InvalidInputError(f"--time-ns must be positive, got {self.time_ns}")
        if self.timestep_fs <= 0 or self.friction_per_ps < 0:
            raise InvalidInputError("timestep must be positive and friction non-negative")
        if self.equilibration_ps < 0:
            raise InvalidInputError("equilibration time must be >= 0 ps")
        for name in ("save_interval_ps", "swap_interval_ps", "checkpoint_interval_ps"):
            self.steps(getattr(self, name), name, positive=True)
        self.steps(self.equilibration_ps, "equilibration_ps", positive=False)
        self.steps(self.time_ns * 1000.0, "time_ns", positive=True)
        if self.workers < 0 or self.threads < 1:
            raise InvalidInputError("--workers must be >= 0 and threads >= 1")
        from moltune.physics.forcefield import SOLVENTS

        if self.solvent not in SOLVENTS:
            raise InvalidInputError(f"unknown solvent {self.solvent!r}; choose one of {SOLVENTS}")

    @property
    def dt_ps(self) -> float:
        return self.timestep_fs / 1000.0

    def steps(self, time_ps: float, name: str = "time", positive: bool = True) -> int:
        """``time_ps`` as a whole number of steps (InvalidInputError if it is not one)."""
        n = round(time_ps / self.dt_ps)
        if abs(n * self.dt_ps - time_ps) > 1e-6 * max(1.0, time_ps) or (positive and n < 1):
            raise InvalidInputError(
                f"{name} = {time_ps} ps is not a positive whole number of {self.timestep_fs} fs steps"
            )
        return int(n)


def swap_log_acceptance(beta_i: float, beta_j: float, u_i: float, u_j: float) -> float:
    """log of the Metropolis ratio for exchanging configurations i <-> j (energies in kJ/mol)."""
    return float((beta_i - beta_j) * (u_i - u_j))


def metropolis_accept(log_ratio: float, rng: np.random.Generator) -> bool:
    """Accept with probability min(1, exp(log_ratio)); draws one uniform number."""
    u = rng.random()
    return bool(log_ratio >= 0.0 or u < math.exp(log_ratio))


def swap_pairs(event_index: int, n_temperatures: int) -> list[tuple[int, int]]:
    """Neighbouring pairs tried at swap event ``event_index``: even pairs, then odd, alternating."""
    return [(i, i + 1) for i in range(event_index % 2, n_temperatures - 1, 2)]


def _derived_seeds(seed: int, k: int) -> tuple[int, int]:
    """(integrator seed, velocity seed) for context k, both in 1..2^31-1."""
    a, b = np.random.SeedSequence([int(seed), int(k)]).generate_state(2)
    return int(a % (2**31 - 2)) + 1, int(b % (2**31 - 2)) + 1


# --------------------------------------------------------------------------------------- replicas
class LocalReplicas:
    """OpenMM contexts for a subset of the temperatures, in this process."""

    def __init__(self, system_xml: str, temps_K: list[float], slots: list[int], cfg: dict):
        import openmm

        system = openmm.XmlSerializer.deserialize(system_xml)
        self.temps = [temps_K[s] for s in slots]
        self.contexts, self.integrators = [], []
        for slot, t in zip(slots, self.temps):
            integ = openmm.LangevinMiddleIntegrator(t, cfg["friction_per_ps"], cfg["dt_ps"])
            integ.setRandomNumberSeed(_derived_seeds(cfg["seed"], slot)[0])
            self.integrators.append(integ)
            self.contexts.append(_make_context(system, integ, cfg["platform"], cfg["threads"]))
        self.vel_seeds = [_derived_seeds(cfg["seed"], s)[1] for s in slots]

    def initialize(self, positions: np.ndarray) -> None:
        for ctx, t, seed, pos in zip(self.contexts, self.temps, self.vel_seeds, positions):
            ctx.setPositions(pos)
            ctx.setVelocitiesToTemperature(t, seed)

    def step(self, n: int, want_positions: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Advance every context n steps; potential energies (kJ/mol) and optionally positions (nm)."""
        for integ in self.integrators:
            integ.step(n)
        energies, positions = [], []
        for ctx in self.contexts:
            st = ctx.getState(getEnergy=True, getPositions=want_positions)
            energies.append(st.getPotentialEnergy()._value)  # kJ/mol
            if want_positions:
                positions.append(st.getPositions(asNumpy=True)._value)  # nm
        return np.asarray(energies), (np.asarray(positions) if want_positions else None)

    def get_states(self) -> tuple[np.ndarray, np.ndarray]:
        pos, vel = [], []
        for ctx in self.contexts:
            st = ctx.getState(getPositions=True, getVelocities=True)
            pos.append(st.getPositions(asNumpy=True)._value)
            vel.append(st.getVelocities(asNumpy=True)._value)
        return np.asarray(pos), np.asarray(vel)

    def set_states(self, updates: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
        for local, (pos, vel) in updates.items():
            self.contexts[local].setPositions(pos)
            self.contexts[local].setVelocities(vel)

    def checkpoints(self) -> list[bytes]:
        return [ctx.createCheckpoint() for ctx in self.contexts]

    def load_checkpoints(self, blobs: list[bytes]) -> None:
        for ctx, blob in zip(self.contexts, blobs):
            ctx.loadCheckpoint(blob)

    def close(self) -> None:
        self.contexts.clear()
        self.integrators.clear()


def _make_context(system, integrator, platform: str, threads: int):
    import openmm

    try:
        plat = openmm.Platform.getPlatformByName(platform)
    except Exception as exc:
        raise InvalidInputError(f"OpenMM platform {platform!r} is not available: {exc}") from exc
    props = {"Threads": str(threads)} if platform == "CPU" else {}
    return openmm.Context(system, integrator, plat, props)


def _worker_main(conn, system_xml: str, temps_K: list[float], slots: list[int], cfg: dict) -> None:
    """Worker process: owns the contexts of ``slots`` and answers the driver's calls."""
    try:
        replicas = LocalReplicas(system_xml, temps_K, slots, cfg)
        conn.send(("ok", None))
    except Exception as exc:  # noqa: BLE001 - report construction errors to the driver
        conn.send(("error", repr(exc)))
        return
    while True:
        method, args = conn.recv()
        if method == "close":
            replicas.close()
            conn.send(("ok", None))
            return
        try:
            conn.send(("ok", getattr(replicas, method)(*args)))
        except Exception as exc:  # noqa: BLE001 - any failure goes back to the driver
            conn.send(("error", repr(exc)))


class WorkerReplicas:
    """Same interface as LocalReplicas, over a worker process (calls can overlap via ``submit``)."""

    def __init__(self, system_xml: str, temps_K: list[float], slots: list[int], cfg: dict):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker_main, args=(child, system_xml, temps_K, slots, cfg), daemon=True
        )
        self.proc.start()
        self._result()

    def _result(self) -> Any:
        while not self.conn.poll(1.0):
            if not self.proc.is_alive():
                raise RuntimeError(f"PT worker process died (exit code {self.proc.exitcode})")
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"PT worker failed: {value}")
        return value

    def submit(self, method: str, *args) -> None:
        self.conn.send((method, args))

    def result(self) -> Any:
        return self._result()

    def __getattr__(self, method: str):
        def call(*args):
            self.submit(method, *args)
            return self.result()

        return call

    def close(self) -> None:
        try:
            self.submit("close")
            self.result()
        except (EOFError, BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.terminate()


class ReplicaSet:
    """All temperatures, split over in-process contexts or worker processes."""

    def __init__(self, system_xml: str, cfg: PTConfig):
        self.temps = list(cfg.temperatures_K)
        k = len(self.temps)
        opts = {
            "friction_per_ps": cfg.friction_per_ps,
            "dt_ps": cfg.dt_ps,
            "seed": cfg.seed,
            "platform": cfg.platform,
            "threads": cfg.threads,
        }
        n_groups = min(cfg.workers, k) if cfg.workers > 0 else 1
        self.slots = [list(range(k))[g::n_groups] for g in range(n_groups)]
        self.parallel = cfg.workers > 0
        cls = WorkerReplicas if self.parallel else LocalReplicas
        self.groups: list[Any] = []
        try:
            for s in self.slots:
                self.groups.append(cls(system_xml, self.temps, s, opts))
        except BaseException:
            self.close()
            raise

    def _gather(self, method: str, *args) -> list[Any]:
        if not self.parallel:
            return [getattr(g, method)(*args) for g in self.groups]
        for g in self.groups:
            g.submit(method, *args)
        return [g.result() for g in self.groups]

    def _merge(self, parts: list[np.ndarray]) -> np.ndarray:
        out = [None] * len(self.temps)
        for slots, arr in zip(self.slots, parts):
            for local, slot in enumerate(slots):
                out[slot] = arr[local]
        return np.asarray(out)

    def _split(self, arr: np.ndarray) -> list[np.ndarray]:
        return [np.asarray([arr[s] for s in slots]) for slots in self.slots]

    def initialize(self, positions: np.ndarray) -> None:
        for g, part in zip(self.groups, self._split(positions)):
            g.initialize(part)

    def step(self, n: int, want_positions: bool) -> tuple[np.ndarray, np.ndarray | None]:
        res = self._gather("step", n, want_positions)
        energies = self._merge([r[0] for r in res])
        positions = self._merge([r[1] for r in res]) if want_positions else None
        return energies, positions

    def get_states(self) -> tuple[np.ndarray, np.ndarray]:
        res = self._gather("get_states")
        return self._merge([r[0] for r in res]), self._merge([r[1] for r in res])

    def set_states(self, updates: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
        for g, slots in zip(self.groups, self.slots):
            local = {slots.index(s): v for s, v in updates.items() if s in slots}
            if local:
                g.set_states(local)

    def checkpoints(self) -> list[bytes]:
        res = self._gather("checkpoints")
        out: list[bytes] = [b""] * len(self.temps)
        for slots, blobs in zip(self.slots, res):
            for slot, blob in zip(slots, blobs):
                out[slot] = blob
        return out

    def load_checkpoints(self, blobs: list[bytes]) -> None:
        for g, slots in zip(self.groups, self.slots):
            g.load_checkpoints([blobs[s] for s in slots])

    def close(self) -> None:
        for g in self.groups:
            g.close()
        self.groups = []


# ------------------------------------------------------------------------------------- the driver
@dataclass
class RunState:
    """The mutable state of a PT run (what ``state.npz`` holds); a swap move reads ``step``,
    ``swap_events`` and ``rng`` and updates ``walkers``."""

    step: int
    n_chunks: int
    n_frames: int
    swap_events: int
    walkers: np.ndarray  # [K] replica index at each temperature
    swap_attempts: np.ndarray  # [K-1]
    swap_accepts: np.ndarray  # [K-1]
    rng: np.random.Generator
    positions: np.ndarray  # [K, N, 3] nm
    velocities: np.ndarray  # [K, N, 3] nm/ps
    context_checkpoints: list[bytes]

    def save(self, path: Path, platform: str) -> None:
        arrays = {
            "step": np.int64(self.step),
            "n_chunks": np.int64(self.n_chunks),
            "n_frames": np.int64(self.n_frames),
            "swap_events": np.int64(self.swap_events),
            "walkers": self.walkers,
            "swap_attempts": self.swap_attempts,
            "swap_accepts": self.swap_accepts,
            "rng_state": np.asarray(json.dumps(self.rng.bit_generator.state)),
            "positions_nm": self.positions,
            "velocities_nm_per_ps": self.velocities,
            "platform": np.asarray(platform),
        }
        for k, blob in enumerate(self.context_checkpoints):
            arrays[f"context_checkpoint_{k}"] = np.frombuffer(blob, dtype=np.uint8)
        save_npz(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> tuple[RunState, str]:
        with np.load(path, allow_pickle=False) as z:
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = json.loads(str(z["rng_state"]))
            k = z["walkers"].shape[0]
            blobs = [z[f"context_checkpoint_{i}"].tobytes() for i in range(k)]
            state = cls(
                step=int(z["step"]),
                n_chunks=int(z["n_chunks"]),
                n_frames=int(z["n_frames"]),
                swap_events=int(z["swap_events"]),
                walkers=z["walkers"].copy(),
                swap_attempts=z["swap_attempts"].copy(),
                swap_accepts=z["swap_accepts"].copy(),
                rng=rng,
                positions=z["positions_nm"].copy(),
                velocities=z["velocities_nm_per_ps"].copy(),
                context_checkpoints=blobs,
            )
            return state, str(z["platform"])


class SwapMove(Protocol):
    """A swap event of :func:`simulate` (default :func:`plain_swap_move`).

    Called once per swap event, after the replicas have been propagated to ``state.step``, with
    the :class:`ReplicaSet` (``get_states`` / ``set_states``: positions nm, velocities nm/ps, by
    temperature index), the :class:`RunState`, the temperatures (K, [K]), their betas (mol/kJ,
    [K]) and the current potential energies (kJ/mol, [K], of the configurations at each
    temperature). It tries the neighbour pairs ``swap_pairs(state.swap_events, K)`` (and whatever
    else it likes), moves the configurations it exchanges with ``replicas.set_states``, swaps the
    entries of ``state.walkers`` for every accepted exchange, draws its random numbers from
    ``state.rng`` only (so runs are reproducible and resume exactly), and returns int8 [K-1] for
    the neighbour pairs: 1 accepted, 0 rejected, -1 not tried. It does not advance
    ``state.swap_events``; :func:`simulate` does after the call.

    Optional method ``flush(out_dir: Path, chunk_index: int)``: called just before chunk
    ``chunk_index`` (and then the state that counts it) is written, so a move can store its own
    per-chunk records that stay consistent with the data on resume.
    """

    def __call__(
        self,
        replicas: ReplicaSet,
        state: RunState,
        temperatures_K: np.ndarray,
        betas: np.ndarray,
        energies_kjmol: np.ndarray,
    ) -> np.ndarray: ...


def _next_multiple(step: int, period: int, offset: int = 0) -> int:
    """Smallest s > step with (s - offset) divisible by period."""
    return offset + ((step - offset) // period + 1) * period


def _trajectory_settings(cfg: PTConfig) -> dict:
    d = asdict(cfg)
    return {k: d[k] for k in TRAJECTORY_KEYS}


METADATA_FORMAT = "moltune-pt-1"
# Files a run writes into its folder: found without a run's metadata.json, they are someone else's.
RUN_FILES = (TOPOLOGY_FILE, STATE_FILE, DATA_FILE, CHUNK_DIR)


def _damaged(out: Path, name: str, exc: BaseException) -> UserError:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return UserError(
        f"the run in {str(out)!r} is damaged: {name} cannot be read "
        f"({type(exc).__name__}: {reason}); start again with a new --out"
    )


def _read_own_metadata(out: Path) -> dict | None:
    """The metadata of the PT run in ``out``, None for a folder without a run; refuses a folder
    whose metadata.json or run files this command did not write (it never overwrites them)."""
    path = out / METADATA_FILE
    if not path.exists():
        found = [n for n in RUN_FILES if (out / n).exists()]
        if found:
            raise UserError(
                f"{str(out)!r} holds {', '.join(found)} but no {METADATA_FILE}: not a "
                "moltune PT run; choose a new --out (nothing is overwritten)"
            )
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(
            f"{path} is not a moltune PT run's metadata ({type(exc).__name__}); if "
            "the run is damaged start again with a new --out (nothing is "
            "overwritten)"
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        raise UserError(
            f"{path} was not written by moltune pt simulate; choose a new --out "
            "(nothing is overwritten)"
        )
    return meta


def _system_xml(topology, cfg: PTConfig) -> str:
    """Serialised OpenMM System of ``topology``; checks the platform exists before any file."""
    import openmm

    from moltune.physics.forcefield import create_system

    system = create_system(topology, cfg.solvent)
    try:
        openmm.Platform.getPlatformByName(cfg.platform)
    except Exception as exc:
        names = [
            openmm.Platform.getPlatform(i).getName()
            for i in range(openmm.Platform.getNumPlatforms())
        ]
        raise InvalidInputError(
            f"OpenMM platform {cfg.platform!r} is not available; "
            f"this machine has {', '.join(names)}"
        ) from exc
    return openmm.XmlSerializer.serialize(system)


def simulate(
    peptide_spec: Any,
    out_dir: str | Path,
    cfg: PTConfig,
    progress: bool = True,
    stop_after_chunks: int | None = None,
    swap_move: SwapMove | None = None,
) -> dict:
    """Run (or resume) parallel tempering of a peptide into ``out_dir``; returns the run summary.

    ``peptide_spec``: a Peptide, a one-letter sequence or a PDB path.  ``stop_after_chunks`` stops
    (as an interruption would) after that many checkpoints in this call; used by tests.
    ``swap_move``: the swap event (:class:`SwapMove`); None is :func:`plain_swap_move`. The
    caller answers for resuming with the same move (the metadata describe the plain swap).
    """
    move = plain_swap_move if swap_move is None else swap_move
    from moltune.common.run import package_versions
    from moltune.physics.forcefield import DEFAULT_FORCEFIELD, SOLVENT_FILES
    from moltune.physics.peptide import Peptide, load_peptide, peptide_from_pdb

    out = Path(out_dir)
    peptide = peptide_spec if isinstance(peptide_spec, Peptide) else None
    if peptide is None:
        peptide = load_peptide(str(peptide_spec), solvent=cfg.solvent)
    k_temps = len(cfg.temperatures_K)
    n_eq = cfg.steps(cfg.equilibration_ps, positive=False)
    n_total = n_eq + cfg.steps(cfg.time_ns * 1000.0)
    swap_steps, save_steps = cfg.steps(cfg.swap_interval_ps), cfg.steps(cfg.save_interval_ps)
    ckpt_steps = cfg.steps(cfg.checkpoint_interval_ps)

    check_output_dir(out)
    meta = _read_own_metadata(out)
    resumed = meta is not None and (out / STATE_FILE).is_file()
    if resumed:
        mismatched = {
            k: (meta.get(k), v)
            for k, v in _trajectory_settings(cfg).items()
            if meta.get(k) != (list(v) if isinstance(v, tuple) else v)
        }
        if mismatched:
            raise UserError(
                f"{str(out)!r} holds a run with other settings ({mismatched}; stored, given); "
                "use the same settings to resume or choose a new --out"
            )
        try:
            stored = peptide_from_pdb(out / TOPOLOGY_FILE)
        except UserError as exc:
            raise _damaged(out, TOPOLOGY_FILE, exc) from exc
        if [a.name for a in stored.topology.atoms()] != [a.name for a in peptide.topology.atoms()]:
            raise UserError(f"{str(out)!r} holds a run of another peptide ({stored.sequence})")
        topology = stored.topology
        try:
            state, saved_platform = RunState.load(out / STATE_FILE)
        except Exception as exc:
            raise _damaged(out, STATE_FILE, exc) from exc
        if state.step > n_total:
            raise UserError(
                f"{str(out)!r} already ran {(state.step - n_eq) * cfg.dt_ps / 1000:.4g} ns, more "
                f"than --time-ns {cfg.time_ns}; give at least that or choose a new --out"
            )
    else:
        # The topology as topology.pdb will give it back, so a resume builds the same System
        # (same term order, hence bit-identical forces).
        topology = app.PDBFile(io.StringIO(peptide.pdb_string())).topology
        state = None
    system_xml = _system_xml(topology, cfg)  # refuses unknown residues and platforms
    if resumed:
        if state.step < n_total and (out / DATA_FILE).is_file():
            (out / DATA_FILE).unlink()  # being extended: the chunks are the data until the end
        for stale in (out / CHUNK_DIR).glob("chunk_*.npz"):  # written after the last state
            if int(stale.stem.split("_")[1]) >= state.n_chunks:
                stale.unlink()
    else:
        out.mkdir(parents=True, exist_ok=True)
        peptide.write_pdb(out / TOPOLOGY_FILE)
        meta = {
            "format": METADATA_FORMAT,
            "peptide": {
                "sequence": peptide.sequence,
                "caps": peptide.caps,
                "n_atoms": peptide.n_atoms,
            },
            **_trajectory_settings(cfg),
            "forcefield": [DEFAULT_FORCEFIELD, *SOLVENT_FILES[cfg.solvent]],
            "nonbonded": "NoCutoff",
            "constraints": None,
            "integrator": "LangevinMiddleIntegrator",
            "swap_scheme": "neighbours, alternating even/odd pairs, Metropolis on potential "
            "energies, velocities rescaled by sqrt(T_new/T_old)",
            "seeds": {
                "swap_rng": cfg.seed,
                "integrators": [_derived_seeds(cfg.seed, k)[0] for k in range(k_temps)],
                "velocities": [_derived_seeds(cfg.seed, k)[1] for k in range(k_temps)],
            },
            "units": {"xyz": "nm", "energy": "kJ/mol", "time": "ps", "temperature": "K"},
            "package_versions": package_versions(),
        }
    meta.update(time_ns=cfg.time_ns, complete=False, workers=cfg.workers, threads=cfg.threads,
                platform=cfg.platform)  # fmt: skip
    write_json(out / METADATA_FILE, meta)

    replicas = ReplicaSet(system_xml, cfg)
    try:
        if state is None:
            replicas.initialize(np.repeat(peptide.positions_nm[None], k_temps, axis=0))
            state = RunState(
                step=0, n_chunks=0, n_frames=0, swap_events=0,
                walkers=np.arange(k_temps, dtype=np.int32),
                swap_attempts=np.zeros(max(k_temps - 1, 0), np.int64),
                swap_accepts=np.zeros(max(k_temps - 1, 0), np.int64),
                rng=np.random.Generator(np.random.PCG64(cfg.seed)),
                positions=None, velocities=None, context_checkpoints=[],
            )  # fmt: skip
        else:
            try:
                if saved_platform != cfg.platform:
                    raise RuntimeError(f"saved on platform {saved_platform}")
                replicas.load_checkpoints(state.context_checkpoints)
            except Exception as exc:  # noqa: BLE001 - other platform or OpenMM build
                log.warning("context checkpoints not loadable (%s); continuing from saved "
                            "positions and velocities with fresh Langevin noise", exc)  # fmt: skip
                replicas.set_states(
                    {k: (state.positions[k], state.velocities[k]) for k in range(k_temps)}
                )
        summary = _run_loop(replicas, state, cfg, out, n_eq, n_total, swap_steps, save_steps,
                            ckpt_steps, progress, stop_after_chunks, move)  # fmt: skip
    finally:
        replicas.close()
    if summary["complete"] and (summary["steps_done"] > 0 or not (out / DATA_FILE).is_file()):
        _consolidate(out, state)
    meta.update(
        complete=summary["complete"],
        n_frames=state.n_frames,
        swap_attempts=state.swap_attempts.tolist(),
        swap_accepts=state.swap_accepts.tolist(),
        swap_acceptance=summary["swap_acceptance"],
        last_segment_speed=summary["speed"],
    )
    write_json(out / METADATA_FILE, meta)
    return {**summary, "out": str(out), "resumed": resumed}


def _run_loop(
    replicas, state, cfg, out, n_eq, n_total, swap_steps, save_steps, ckpt_steps, progress,
    stop_after_chunks, move,
) -> dict:  # fmt: skip
    from tqdm.auto import tqdm

    temps = np.asarray(cfg.temperatures_K)
    betas = beta(temps)
    k_temps = len(temps)
    buf: dict[str, list] = {key: [] for key in FRAME_KEYS + SWAP_KEYS}
    chunks_this_call = 0
    start_step, t0, c0 = state.step, time.perf_counter(), time.process_time()
    bar = tqdm(
        total=n_total, initial=state.step, unit="ps", unit_scale=cfg.dt_ps,
        desc=f"PT {k_temps} replicas", disable=not progress, mininterval=1.0,
    )  # fmt: skip
    try:
        while state.step < n_total:
            nxt_swap = _next_multiple(state.step, swap_steps)
            nxt_save = (
                _next_multiple(state.step, save_steps, n_eq)
                if state.step >= n_eq
                else n_eq + save_steps
            )
            nxt_ckpt = _next_multiple(state.step, ckpt_steps)
            nxt = min(nxt_swap, nxt_save, nxt_ckpt, n_total)
            is_save = nxt == nxt_save and nxt > n_eq
            energies, positions = replicas.step(nxt - state.step, is_save)
            bar.update(nxt - state.step)
            state.step = nxt
            if not np.all(np.isfinite(energies)):
                raise RuntimeError(f"non-finite potential energy at step {nxt}: {energies}")
            t_ps = (nxt - n_eq) * cfg.dt_ps
            if is_save:
                buf["xyz_nm"].append(positions.astype(np.float32))
                buf["energy_kjmol"].append(energies.copy())
                buf["replica_index"].append(state.walkers.copy())
                buf["time_ps"].append(t_ps)
                state.n_frames += 1
            if nxt == nxt_swap and k_temps > 1:
                accepted = np.asarray(move(replicas, state, temps, betas, energies), np.int8)
                state.swap_events += 1
                if nxt > n_eq:
                    buf["swap_time_ps"].append(t_ps)
                    buf["swap_accepted"].append(accepted)
                    tried = accepted >= 0
                    state.swap_attempts += tried
                    state.swap_accepts += accepted > 0
            if nxt == nxt_ckpt or nxt == n_total:
                _checkpoint(replicas, state, buf, out, cfg, move)
                buf = {key: [] for key in FRAME_KEYS + SWAP_KEYS}
                chunks_this_call += 1
                if stop_after_chunks is not None and chunks_this_call >= stop_after_chunks:
                    break
    finally:
        bar.close()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    done = state.step - start_step
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = (state.swap_accepts / state.swap_attempts).tolist()
    speed = {
        "wall_s": elapsed,
        "steps_per_s_per_replica": done / elapsed if elapsed > 0 else None,
        "ns_per_day_per_replica": done * cfg.dt_ps / 1000 / (elapsed / 86400) if elapsed else None,
        # CPU time of this process (all replicas; with workers the work is in the workers)
        "cpu_s": cpu,
        "replica_steps_per_cpu_s": done * k_temps / cpu if cpu > 0 and not cfg.workers else None,
    }
    return {"complete": state.step >= n_total, "n_frames": state.n_frames, "steps_done": done,
            "swap_acceptance": acc, "speed": speed}  # fmt: skip


def plain_swap_move(replicas, state: RunState, temps, betas, energies) -> np.ndarray:
    """The plain swap event (:class:`SwapMove`): Metropolis on the potential energies for each
    pair of this event's parity, velocities rescaled by sqrt(T_new / T_old); int8 [K-1]."""
    k_temps = len(temps)
    result = np.full(k_temps - 1, -1, np.int8)
    accepted_pairs = []
    for i, j in swap_pairs(state.swap_events, k_temps):
        ok = metropolis_accept(
            swap_log_acceptance(betas[i], betas[j], energies[i], energies[j]), state.rng
        )
        result[i] = int(ok)
        if ok:
            accepted_pairs.append((i, j))
    if accepted_pairs:
        pos, vel = replicas.get_states()
        updates = {}
        for i, j in accepted_pairs:
            updates[i] = (pos[j], vel[j] * math.sqrt(temps[i] / temps[j]))
            updates[j] = (pos[i], vel[i] * math.sqrt(temps[j] / temps[i]))
            state.walkers[[i, j]] = state.walkers[[j, i]]
        replicas.set_states(updates)
    return result


def _checkpoint(
    replicas, state: RunState, buf: dict, out: Path, cfg: PTConfig, move: SwapMove | None = None
) -> None:
    """Write the move's records (``move.flush``, if any) and the chunk of new frames (if any),
    then the state that counts them (all atomic)."""
    if buf["time_ps"] or buf["swap_time_ps"]:
        flush = getattr(move, "flush", None)
        if flush is not None:
            flush(out, state.n_chunks)
        k = len(cfg.temperatures_K)
        arrays = {
            "xyz_nm": np.stack(buf["xyz_nm"], axis=1) if buf["xyz_nm"] else None,
            "energy_kjmol": np.stack(buf["energy_kjmol"], axis=1) if buf["time_ps"] else None,
            "replica_index": np.stack(buf["replica_index"], axis=1) if buf["time_ps"] else None,
            "time_ps": np.asarray(buf["time_ps"], np.float64),
            "swap_time_ps": np.asarray(buf["swap_time_ps"], np.float64),
            "swap_accepted": (
                np.stack(buf["swap_accepted"]) if buf["swap_accepted"]
                else np.zeros((0, max(k - 1, 0)), np.int8)
            ),
        }  # fmt: skip
        if arrays["xyz_nm"] is None:
            n = state.positions.shape[1] if state.positions is not None else 0
            arrays["xyz_nm"] = np.zeros((k, 0, n, 3), np.float32)
            arrays["energy_kjmol"] = np.zeros((k, 0))
            arrays["replica_index"] = np.zeros((k, 0), np.int32)
        save_npz(chunk_path(out, state.n_chunks), **arrays)
        state.n_chunks += 1
    state.positions, state.velocities = replicas.get_states()
    state.context_checkpoints = replicas.checkpoints()
    state.save(out / STATE_FILE, cfg.platform)


def _consolidate(out: Path, state: RunState) -> None:
    """Write pt_data.npz from the chunks the state counts."""
    from moltune.physics.ptdata import read_chunks

    frames = read_chunks(out, state.n_chunks)
    save_npz(
        out / DATA_FILE,
        temperatures_K=np.asarray(json.loads((out / METADATA_FILE).read_text())["temperatures_K"]),
        swap_attempts=state.swap_attempts,
        swap_accepts=state.swap_accepts,
        **frames,
    )
