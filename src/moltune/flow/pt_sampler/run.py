"""Running and resuming a flow-PT run (``moltune pt sample``).

:func:`sample` checks that a run folder it resumes holds the same flow (parameter fingerprint)
and swap plan, builds the :class:`~moltune.flow.pt_sampler.move.FlowSwapMove` and hands it to
``replica_exchange.simulate``, which owns the loop, the chunks and the checkpoints; afterwards
it writes ``sampler_stats.json`` and ``plots/sampler.png``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moltune.common.errors import UserError
from moltune.common.io import write_json
from moltune.flow.pt_sampler.analysis import sampler_statistics
from moltune.flow.pt_sampler.move import FlowSwapMove
from moltune.flow.pt_sampler.plan import check_skip_every, plan_swaps
from moltune.flow.pt_sampler.plots import plot_sampler
from moltune.flow.pt_sampler.records import (
    STATS_FILE,
    SwapRecords,
    annotate_metadata,
    drop_stale_records,
    read_sampler_meta,
    write_sampler_meta,
)

log = logging.getLogger(__name__)

__all__ = ["flow_fingerprint", "sample"]


def flow_fingerprint(flow: torch.nn.Module | None) -> str | None:
    """sha256 over the flow's class and parameters/buffers: a resumed run must use the same map."""
    if flow is None:
        return None
    h = hashlib.sha256(type(flow).__name__.encode())
    for name, t in sorted(flow.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _masses_amu(system) -> np.ndarray:
    from openmm import unit

    return np.asarray(
        [
            system.getParticleMass(i).value_in_unit(unit.dalton)
            for i in range(system.getNumParticles())
        ]
    )


def _check_topology(flow_info: dict | None, peptide) -> None:
    top = (flow_info or {}).get("topology")
    if top is None:
        return
    a = [(x.name, x.residue.name) for x in top.atoms()]
    b = [(x.name, x.residue.name) for x in peptide.topology.atoms()]
    if a != b:
        raise UserError(
            f"the flow was trained on another molecule ({len(a)} atoms) than the peptide "
            f"{peptide.sequence} ({len(b)} atoms)"
        )


def sample(
    peptide_spec: Any,
    out_dir: str | Path,
    cfg,
    flow: torch.nn.Module | None = None,
    flow_info: dict | None = None,
    skip_pairs: list[tuple[int, int]] = (),
    skip_every: int = 1,
    progress: bool = True,
    stop_after_chunks: int | None = None,
    observable_residue: int = 0,
    velocities: str = "harmonic",
) -> dict:
    """Run (or resume) flow-enhanced PT into ``out_dir``; returns ``analysis.sampler_statistics``.

    ``cfg`` is a ``replica_exchange.PTConfig``; ``flow`` None gives plain PT (exactly
    ``replica_exchange.simulate``). ``flow_info`` as from ``load_flow`` (decides which pairs the
    flow serves, ``plan.plan_swaps``; None: every pair). ``skip_pairs`` index pairs (i, j), j > i+1.
    """
    from moltune.physics.forcefield import create_system
    from moltune.physics.peptide import Peptide, load_peptide
    from moltune.physics.ptdata import STATE_FILE
    from moltune.physics.replica_exchange import simulate

    out = Path(out_dir)
    check_skip_every(skip_every)
    if skip_pairs and flow is None:
        raise UserError(
            "--skip needs --flow (a plain 300 <-> 1000 K swap is almost never accepted)"
        )
    peptide = peptide_spec if isinstance(peptide_spec, Peptide) else None
    if peptide is None:
        peptide = load_peptide(str(peptide_spec), solvent=cfg.solvent)
    _check_topology(flow_info, peptide)
    temps = list(cfg.temperatures_K)
    plan = plan_swaps(temps, flow_info, list(skip_pairs), has_flow=flow is not None)
    plan_json = {f"{i}-{j}": how for (i, j), how in plan.items()}
    identity = {
        "flow_fingerprint": flow_fingerprint(flow),
        "plan": plan_json,
        "skip_every": int(skip_every) if skip_pairs else None,
    }
    if (out / STATE_FILE).is_file():
        stored = read_sampler_meta(out)
        stored_id = (
            {k: stored.get(k) for k in identity}
            if stored
            else {"flow_fingerprint": None, "plan": {f"{i}-{i + 1}": "plain" for i in range(len(temps) - 1)},
                  "skip_every": None}
        )  # fmt: skip
        if stored_id != identity:
            raise UserError(
                f"{str(out)!r} holds a run with another flow or swap plan; resume with the same "
                "--flow/--skip or choose a new --out"
            )
        drop_stale_records(out)
        meta = stored or {}
    else:
        meta = {}
    meta.update(
        identity,
        format="moltune-flow-pt-1",
        flow=None if flow is None else (flow_info or {}).get("path", type(flow).__name__),
        flow_name=None if flow is None else (flow_info or {}).get("name", type(flow).__name__),
        flow_trained_pairs_K=None if not flow_info else [
            [flow_info["temperatures_K"][a], flow_info["temperatures_K"][b]]
            for a, b in flow_info.get("pairs", [])
        ],
        swap_scheme=(
            "plain PT: neighbours, alternating even/odd, Metropolis on potential energies, "
            "velocities rescaled" if flow is None else
            "neighbours alternating even/odd (+ skips); pairs the flow serves propose "
            "(T^-1(y), T(x)), accepted with min(1, exp(D)), D with log|det J| of both directions, "
            f"TorchEnergy float64; velocities after an accepted flow swap: {velocities}; other "
            "pairs plain (velocities rescaled)"
        ),
        observable_residue=observable_residue,
    )  # fmt: skip
    meta.setdefault("segments", [])
    out.mkdir(parents=True, exist_ok=True)
    write_sampler_meta(out, meta)

    torch_threads = torch.get_num_threads()
    setup0 = time.process_time()
    if flow is None:
        c0, w0 = time.process_time(), time.perf_counter()
        res = simulate(peptide, out, cfg, progress=progress, stop_after_chunks=stop_after_chunks)
    else:
        from threadpoolctl import threadpool_limits

        from moltune.physics.energy import TorchEnergy

        # one swap of one molecule: threads only add overhead (and CPU time) to its small torch
        # calls and to the 3N x 3N eigendecompositions of the velocity draw (numpy's BLAS)
        torch.set_num_threads(1)
        blas = threadpool_limits(limits=1)
        try:
            energy = TorchEnergy.from_topology(peptide.topology, solvent=cfg.solvent).double()
            move = FlowSwapMove(
                flow, energy.energy, temps, plan,
                _masses_amu(create_system(peptide.topology, cfg.solvent)),
                n_eq_steps=cfg.steps(cfg.equilibration_ps, positive=False), dt_ps=cfg.dt_ps,
                skip_every=skip_every, velocities=velocities,
            )  # fmt: skip
            # one-off costs (energy kernel JIT, first flow call) are setup, not sampling
            move._propose(np.repeat(peptide.positions_nm[None], len(temps), 0), [(0, 1)])
            move.buf = SwapRecords()
            c0, w0 = time.process_time(), time.perf_counter()
            res = simulate(peptide, out, cfg, progress=progress,
                           stop_after_chunks=stop_after_chunks, swap_move=move)  # fmt: skip
        finally:
            torch.set_num_threads(torch_threads)
            blas.restore_original_limits()
    meta["segments"].append({
        "cpu_s": time.process_time() - c0,
        "setup_cpu_s": c0 - setup0,
        "wall_s": time.perf_counter() - w0,
        "steps": res["steps_done"],
        "complete": res["complete"],
        "workers": cfg.workers,
    })  # fmt: skip
    write_sampler_meta(out, meta)
    annotate_metadata(out, meta)
    stats = sampler_statistics(out, observable_residue=observable_residue)
    write_json(out / STATS_FILE, stats)
    try:
        plot_sampler(out, out / "plots" / "sampler.png")
    except Exception as exc:  # noqa: BLE001 - a figure must not lose a finished run
        log.warning("sampler plot failed: %s", exc)
    return {**stats, "resumed": res["resumed"], "complete": res["complete"]}
