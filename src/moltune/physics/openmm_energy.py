"""Energies and forces from OpenMM itself, as a differentiable torch function.

``OpenMMEnergy`` evaluates U(x) (kJ/mol) and forces for a batch x [B, N, 3] (nm) with OpenMM
contexts in float64 (Reference platform by default, or CPU), either in this process or spread
over worker processes, each owning its own Context. It is the reference the torch energy is
tested against, and the fallback for force fields ``TorchEnergy`` does not implement.

Same conventions as ``TorchEnergy``: NaN/inf coordinates raise ``InvalidInputError``; an energy
OpenMM returns as NaN (e.g. exactly overlapping atoms) is reported as +inf, NaN force
components as 0.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp

import numpy as np
import torch

from moltune.common.errors import InvalidInputError
from moltune.physics.energy import as_batch, check_coordinates

PLATFORMS = ("Reference", "CPU")

# --- worker side (module-level so spawned processes can find it) -------------------------------
_WORKER_CONTEXT = None


def _make_context(system_xml: str, platform: str):
    import openmm

    system = openmm.XmlSerializer.deserialize(system_xml)
    props = {"Threads": "1"} if platform == "CPU" else {}
    return openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform), props
    )


def _worker_init(system_xml: str, platform: str) -> None:
    global _WORKER_CONTEXT
    torch.set_num_threads(1)
    _WORKER_CONTEXT = _make_context(system_xml, platform)


def _evaluate(context, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energies [B] (kJ/mol) and forces [B, N, 3] (kJ/mol/nm) for float64 positions xs (nm)."""
    u = np.empty(xs.shape[0])
    f = np.empty_like(xs)
    for k, x in enumerate(xs):
        context.setPositions(x)
        state = context.getState(getEnergy=True, getForces=True)
        u[k] = state.getPotentialEnergy()._value
        f[k] = state.getForces(asNumpy=True)._value
    u[np.isnan(u) | (u == -np.inf)] = np.inf
    f[np.isnan(f)] = 0.0
    return u, f


def _worker_evaluate(xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _evaluate(_WORKER_CONTEXT, xs)


# --- torch side ---------------------------------------------------------------------------------
class _OpenMMFunction(torch.autograd.Function):
    """U(x) from OpenMM; backward multiplies the upstream gradient by -F (first order only)."""

    @staticmethod
    def forward(ctx, x, evaluator):
        u, f = evaluator.evaluate(x.detach().cpu().numpy().astype(np.float64))
        ctx.save_for_backward(torch.from_numpy(-f).to(device=x.device, dtype=x.dtype))
        return torch.from_numpy(u).to(device=x.device, dtype=x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_u):
        (grad_x,) = ctx.saved_tensors
        return grad_u[:, None, None] * grad_x, None


class OpenMMEnergy(torch.nn.Module):
    """U(x) in kJ/mol from OpenMM contexts (float64), differentiable w.r.t. x (nm).

    ``source`` is an OpenMM Topology (the System is built with moltune's force field and
    ``solvent``) or a ready ``openmm.System`` (``solvent`` then ignored). With ``n_workers`` > 1,
    batches of at least ``2 * n_workers`` configurations are split over that many worker
    processes (started on first use, each with its own Context; call :meth:`close` or use the
    object as a context manager to stop them).
    """

    def __init__(self, source, solvent: str = "obc2", n_workers: int = 1,
                 platform: str = "Reference"):
        super().__init__()
        import openmm

        if platform not in PLATFORMS:
            raise InvalidInputError(f"unknown OpenMM platform {platform!r}; choose {PLATFORMS}")
        if int(n_workers) < 1:
            raise InvalidInputError(f"n_workers must be >= 1, got {n_workers}")
        if isinstance(source, openmm.System):
            system = source
        else:
            from moltune.physics.forcefield import create_system

            system = create_system(source, solvent=solvent)
        self.n_atoms = system.getNumParticles()
        self.n_workers = int(n_workers)
        self.platform = platform
        self._system_xml = openmm.XmlSerializer.serialize(system)
        self._context = None
        self._pool = None

    @classmethod
    def from_pdb(cls, path, solvent: str = "obc2", **kwargs) -> OpenMMEnergy:
        from moltune.physics.energy import read_pdb_topology

        return cls(read_pdb_topology(path), solvent=solvent, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy(x)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """U(x) [B] (or [] for [N, 3]) in kJ/mol, same dtype/device as x; grads give -forces."""
        x, squeeze = as_batch(x, self.n_atoms)
        u = _OpenMMFunction.apply(x, self)
        return u[0] if squeeze else u

    def energy_and_forces(self, x) -> tuple[np.ndarray, np.ndarray]:
        """(U [B] kJ/mol, F [B, N, 3] kJ/mol/nm) as float64 numpy arrays, for x [B, N, 3] nm."""
        x = check_coordinates(torch.as_tensor(np.asarray(x)), self.n_atoms)
        squeeze = x.dim() == 2
        xs = x.reshape(-1, self.n_atoms, 3).numpy().astype(np.float64)
        u, f = self.evaluate(xs)
        return (u[0], f[0]) if squeeze else (u, f)

    def evaluate(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Energies and forces for a validated float64 array [B, N, 3] (nm)."""
        if self.n_workers > 1 and len(xs) >= 2 * self.n_workers:
            pool = self._get_pool()
            chunks = np.array_split(xs, min(len(xs), 4 * self.n_workers))
            parts = pool.map(_worker_evaluate, chunks)
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        if self._context is None:
            self._context = _make_context(self._system_xml, self.platform)
        return _evaluate(self._context, xs)

    def _get_pool(self):
        if self._pool is None:
            ctx = mp.get_context("spawn")
            self._pool = ctx.Pool(
                self.n_workers, initializer=_worker_init,
                initargs=(self._system_xml, self.platform),
            )
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (if any)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):  # may run during interpreter shutdown
            self.close()

    def __getstate__(self):  # contexts and pools do not pickle; rebuild on demand
        state = self.__dict__.copy()
        state["_context"] = None
        state["_pool"] = None
        return state
