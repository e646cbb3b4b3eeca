"""``moltune demo``: the main job end to end, as an ordered list of steps over one run folder.

Steps (``STEPS``): build the peptide -> parallel tempering -> analysis (Ramachandran plots,
energy histograms, energy statistics) -> a short transport-flow training between the two
coldest temperatures (swap acceptance with the flow against the naive swap on held-out frames)
-> report.  Later features add steps with
``add_step(name, fn, before="report")``; each step reads and extends ``DemoContext.results``.

Run folder (``moltune.common.run.RunDir``)::

    OUT/config.yaml              resolved DemoConfig
    OUT/peptide.pdb              the built, minimised peptide
    OUT/pt/                      parallel-tempering data (layout: moltune.physics.ptdata)
    OUT/plots/ramachandran.png   free energy (kT) of phi/psi, one panel per temperature
    OUT/plots/energy_histograms.png
    OUT/energy_stats.json        mean/std (+ block SE) per temperature, swap acceptances
    OUT/flow/                    the transport-flow run folder (config, metrics.csv, checkpoints,
                                 plots; layout: moltune.flow.train)
    OUT/report.md
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moltune.common.io import write_json, write_text
from moltune.common.run import RunDir

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Settings of the demo (temperatures in K, times in ps)."""

    sequence: str = "AA"
    caps: bool = False
    temperatures_K: list[float] = field(default_factory=lambda: [300.0, 450.0, 670.0, 1000.0])
    time_ps: float = 20.0
    equilibration_ps: float = 2.0
    save_interval_ps: float = 0.1
    swap_interval_ps: float = 0.1
    seed: int = 0
    solvent: str = "obc2"
    flow_preset: str = "aa_300_450"  # transport-flow preset; data and length set by the demo
    flow_steps: int = 60  # optimiser steps of the demo's flow training (0: skip it)


@dataclass
class DemoContext:
    run: RunDir
    cfg: DemoConfig
    results: dict[str, Any] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)  # markdown sections, in step order


def step_build(ctx: DemoContext) -> None:
    from moltune.physics.peptide import build_peptide, potential_energy

    pep = build_peptide(ctx.cfg.sequence, caps=ctx.cfg.caps, solvent=ctx.cfg.solvent)
    pep.write_pdb(ctx.run.path / "peptide.pdb")
    u = potential_energy(pep.topology, pep.positions_nm, ctx.cfg.solvent)
    ctx.results["peptide"] = pep
    ctx.report.append(
        f"## Peptide\n\n{pep.sequence} ({'ACE/NME caps' if pep.caps else 'zwitterionic'}), "
        f"{pep.n_atoms} atoms, minimised U = {u:.1f} kJ/mol (Amber14 + {ctx.cfg.solvent}); "
        "`peptide.pdb`.\n"
    )


def step_parallel_tempering(ctx: DemoContext) -> None:
    from moltune.physics.replica_exchange import PTConfig, simulate

    c = ctx.cfg
    pt_cfg = PTConfig(
        temperatures_K=c.temperatures_K,
        time_ns=c.time_ps / 1000.0,
        save_interval_ps=c.save_interval_ps,
        swap_interval_ps=c.swap_interval_ps,
        equilibration_ps=c.equilibration_ps,
        checkpoint_interval_ps=max(c.time_ps / 4, c.save_interval_ps),
        seed=c.seed,
        solvent=c.solvent,
    )
    res = simulate(ctx.results["peptide"], ctx.run.path / "pt", pt_cfg, progress=True)
    ctx.results["pt_dir"] = Path(res["out"])
    ctx.results["pt_speed"] = res["speed"]


def step_analysis(ctx: DemoContext) -> None:
    from moltune.physics.geometry import ramachandran_angles
    from moltune.physics.plots import energy_histograms, ramachandran
    from moltune.physics.ptdata import energy_statistics, load_pt_data

    data = load_pt_data(ctx.results["pt_dir"])
    names = [f"{t:.0f} K" for t in data.temperatures_K]
    panels = {n: ramachandran_angles(x, data.md_topology) for n, x in zip(names, data.xyz_nm)}
    ramachandran(panels, ctx.run.plots / "ramachandran.png")
    energy_histograms(dict(zip(names, data.energy_kjmol)), ctx.run.plots / "energy_histograms.png")
    stats = energy_statistics(data)
    stats["speed"] = ctx.results.get("pt_speed")
    write_json(ctx.run.path / "energy_stats.json", stats)
    ctx.results["energy_stats"] = stats
    rows = [
        "| T / K | frames | mean U / (kJ/mol) | std U | SE of mean (blocks) |",
        "|---|---|---|---|---|",
    ]
    for t in stats["temperatures"]:
        rows.append(
            f"| {t['temperature_K']:.0f} | {t['n_frames']} | {t['mean_kjmol']:.1f} | "
            f"{t['std_kjmol']:.1f} | {t['mean_se_kjmol']:.1f} |"
        )
    rows += ["", "| pair / K | attempts | observed acceptance | energy-overlap estimate |",
             "|---|---|---|---|"]  # fmt: skip
    for p in stats["pairs"]:
        a, b = p["pair_K"]
        rows.append(
            f"| {a:.0f}-{b:.0f} | {p['attempts']} | {p['observed_acceptance']:.3f} | "
            f"{p['overlap_acceptance']:.3f} |"
        )
    ctx.report.append(
        f"## Parallel tempering\n\n{data.n_frames} frames per temperature "
        f"({ctx.cfg.time_ps:g} ps per replica after {ctx.cfg.equilibration_ps:g} ps "
        "equilibration); data in `pt/`, statistics in `energy_stats.json`.\n\n"
        + "\n".join(rows)
        + "\n\n![Ramachandran](plots/ramachandran.png)\n\n"
        "![Energies](plots/energy_histograms.png)\n"
    )


def step_transport_flow(ctx: DemoContext) -> None:
    """A short TarFlow training T_0 -> T_1 on the demo's own PT frames (last 25% held out).

    Demo-sized (tens of steps, a few hundred correlated frames): it shows the workflow and that
    the flow raises swap acceptance above the naive swap; ``moltune pt train --preset
    aa_300_450`` on nanoseconds of data is the real run.
    """
    import pandas as pd

    from moltune.common.config import load_config
    from moltune.flow.train import TrainConfig, train
    from moltune.physics.ptdata import load_pt_data

    c = ctx.cfg
    if c.flow_steps <= 0:
        return
    held_out = 0.25  # last quarter of the demo's frames validates the flow
    n_train = round(load_pt_data(ctx.results["pt_dir"]).n_frames * (1 - held_out))
    cfg = load_config(
        TrainConfig, c.flow_preset, steps=c.flow_steps, batch_size=max(1, min(64, n_train)),
        max_minutes=15.0, val_every_steps=c.flow_steps, seed=c.seed, solvent=c.solvent,
        flow={"n_blocks": 2, "d_model": 32, "n_layers": 1},  # demo-sized TarFlow
        data={"train_dir": str(ctx.results["pt_dir"]), "pairs": [[0, 1]], "val_pairs": 1000,
              "val_fraction": held_out, "reload_every_epoch": False},
    )  # fmt: skip
    cfg.data.test_dir = None  # hold out the tail of the demo's own run
    run_path = train(cfg, ctx.run.path / "flow")
    val = pd.read_csv(run_path / "metrics.csv").dropna(subset=["val/acceptance_flow"])
    naive = float(val["val/acceptance_naive"].iloc[-1])
    flow = float(val["val/acceptance_flow"].iloc[-1])
    ctx.results["flow"] = {"run": run_path, "acceptance_naive": naive, "acceptance_flow": flow}
    t0, t1 = c.temperatures_K[:2]
    ctx.report.append(
        f"## Transport flow ({t0:g} K <-> {t1:g} K)\n\nA {cfg.flow.name} over "
        f"{cfg.flow.representation} coordinates trained for {c.flow_steps} steps on the frames "
        f"above (run folder `flow/`). Swap acceptance on the held-out last "
        f"{cfg.data.val_fraction:.0%} of the frames: naive {naive:.3f}, through the flow "
        f"{flow:.3f}. Demo-sized; the real run is `moltune pt train --preset "
        f"{c.flow_preset}` on nanoseconds of PT data.\n\n"
        "![acceptance](flow/plots/acceptance.png)\n"
    )


def step_report(ctx: DemoContext) -> None:
    head = (
        f"# moltune demo: {ctx.cfg.sequence}\n\nSteps: {', '.join(n for n, _ in STEPS)}.\n"
        "Reference (plain MD of AA, Amber14/OBC2): mean U about -508 (std 15), -467 (21), "
        "-408 (32), -322 (47) kJ/mol at 300/450/670/1000 K; naive swap acceptance about "
        "0.10/0.11/0.12. A short demo is noisier than these.\n"
    )
    write_text(ctx.run.report, "\n".join([head, *ctx.report]))


Step = tuple[str, Callable[[DemoContext], None]]
STEPS: list[Step] = [
    ("build peptide", step_build),
    ("parallel tempering", step_parallel_tempering),
    ("analysis", step_analysis),
    ("transport flow", step_transport_flow),
    ("report", step_report),
]


def add_step(name: str, fn: Callable[[DemoContext], None], before: str | None = "report") -> None:
    """Insert a demo step before the step named ``before`` (appended if None or absent)."""
    names = [n for n, _ in STEPS]
    if name in names:
        STEPS[names.index(name)] = (name, fn)
        return
    idx = names.index(before) if before in names else len(STEPS)
    STEPS.insert(idx, (name, fn))


def run_demo(out: str | Path, cfg: DemoConfig | None = None) -> DemoContext:
    """Run every step of the demo into run folder ``out``; returns the context with results."""
    cfg = cfg or DemoConfig()
    run = RunDir(Path(out))
    run.write_config(cfg)
    ctx = DemoContext(run=run, cfg=cfg)
    for name, fn in STEPS:
        t0 = time.perf_counter()
        log.info("demo step: %s", name)
        fn(ctx)
        ctx.results.setdefault("step_seconds", {})[name] = round(time.perf_counter() - t0, 2)
    return ctx
