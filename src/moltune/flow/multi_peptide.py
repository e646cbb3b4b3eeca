"""One transport flow for several peptides (issue 4, transfer): a shared TarFlow core.

Why a separate trainer: ``moltune.flow.train`` takes the PT data of one system (one topology, one
energy). Here every peptide keeps its own coordinate representation (its atoms' tokens and the
standardisation fitted on its own frames) and its own energy (Amber14 + OBC2, float64), while the
TarFlow core -- which sees a peptide only through its atoms' embeddings and the temperature pair
-- is shared. Each step draws a batch of one peptide (round robin over the peptides), mixing its
configured temperature pairs, and minimises the same two-direction loss as single-peptide
training (``moltune.flow.losses.transport_terms``). The per-coordinate layer has one parameter
per coordinate of one molecule, so it cannot be shared: ``per_coordinate`` must be false.

Checkpoints (``RUN/checkpoints/last.ckpt`` and ``best.ckpt``, best = highest mean validation
acceptance over every peptide and pair) use the layout :func:`moltune.flow.checkpoint.load_flow`
reads: ``state_dict["flow.core.*"]`` (the shared weights), ``flow.representation.*`` of the
first peptide and ``hyper_parameters["moltune"]`` (flow config, the first peptide's topology, the
ladder, the pairs); the other peptides' representations are kept under
``peptide_representations``. So ``moltune pt transfer --flow RUN`` (any peptide; the
standardisation is refitted on that peptide's frames) and ``moltune pt sample --flow RUN`` (the
first peptide) take the run as it is. ``init`` starts the core from such a checkpoint
(fine-tuning on an unseen peptide). No resume: a run is short and restarts from ``init``.

Torsion origin. ``Representation.fit`` centres every torsion on its circular mean over the
frames it is given. For 2- and 3-fold rotors (NH3+, CH3, ...) that mean is arbitrary and changes
from one data set to another (AA train vs test data: up to 1.6 rad), and the learned map is not
invariant to it: refitting on other frames of the *same* peptide dropped AA's 300-450 K
acceptance from 0.72 to 0.47. ``torsion_origin: zero`` (:func:`fit_representation`) keeps the
fitted standardisation of bonds and angles but leaves every circular torsion at its physical
value (origin 0), the same convention on every peptide; the checkpoint records it so
``moltune.flow.pt_sampler.run_flow_factory`` refits unseen peptides the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moltune.common.errors import InvalidInputError
from moltune.flow.train import FlowConfig, load_pt_runs

log = logging.getLogger(__name__)

__all__ = ["MultiTrainConfig", "PeptideSet", "load_peptide_sets", "train_multi"]


@dataclass
class MultiTrainConfig:
    """A multi-peptide transport-flow run (defaults <- preset YAML <- CLI flags).

    ``peptides`` maps a name to ``{"train_dir": DIR or [DIR, ...], "test_dir": DIR or null}``
    (``moltune pt simulate`` folders of one ladder); without ``test_dir`` the last
    ``val_fraction`` of each temperature's frames is held out for validation.
    """

    flow: FlowConfig = field(default_factory=lambda: FlowConfig(n_blocks=2, per_coordinate=False))
    peptides: dict = field(default_factory=dict)
    pairs: list | None = None  # [[i, j], ...] ladder indices; None = neighbours
    val_pairs: int = 200  # validation frame pairs per peptide and temperature pair
    val_fraction: float = 0.1
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_fraction: float = 0.05
    grad_clip: float = 10.0
    energy_cut_kT: float = 1000.0
    steps: int = 2000
    max_minutes: float | None = 30.0
    val_every_steps: int = 100
    seed: int = 0
    threads: int = 1
    solvent: str = "obc2"
    init: str | None = None  # checkpoint / run whose shared core starts this run
    torsion_origin: str = "zero"  # "zero" (physical torsions) or "fitted" (circular means)


@dataclass
class PeptideSet:
    """One peptide's training and validation pairs, its flow view, energy and reference energies."""

    name: str
    data: Any  # PTData (training frames)
    train_sets: list
    val_sets: list
    flow: torch.nn.Module  # TransportFlow(own representation, shared core)
    energy: Any  # [B, N, 3] nm float64 -> U [B] kJ/mol
    u_ref: dict[float, float]


TORSION_ORIGINS = ("zero", "fitted")


def fit_representation(rep, xyz_nm: np.ndarray, torsion_origin: str = "fitted"):
    """``rep.fit(xyz_nm)``; with ``torsion_origin="zero"`` the circular torsions keep origin 0."""
    from moltune.flow.coordinates import CIRCULAR

    if torsion_origin not in TORSION_ORIGINS:
        raise InvalidInputError(f"torsion_origin must be one of {TORSION_ORIGINS}, "
                                f"got {torsion_origin!r}")  # fmt: skip
    rep.fit(xyz_nm)
    if torsion_origin == "zero":
        with torch.no_grad():
            rep.mean[rep.slot_kind == CIRCULAR] = 0.0
    return rep


def load_peptide_sets(cfg: MultiTrainConfig, core: torch.nn.Module) -> list[PeptideSet]:
    """Each configured peptide's pairs, with a flow view sharing ``core`` (representation fitted
    on that peptide's training frames of every temperature used)."""
    from moltune.flow.coordinates import make_representation
    from moltune.flow.lightning import make_pairs, neighbour_pairs
    from moltune.flow.models import TransportFlow
    from moltune.physics.energy import TorchEnergy

    if not cfg.peptides:
        raise InvalidInputError("no peptides configured (peptides: {NAME: {train_dir: DIR}})")
    sets, ladder = [], None
    for name, spec in cfg.peptides.items():
        spec = {"train_dir": spec} if isinstance(spec, (str, list)) else dict(spec)
        unknown = set(spec) - {"train_dir", "test_dir"}
        if unknown or "train_dir" not in spec:
            raise InvalidInputError(f"peptide {name}: expected train_dir (and test_dir), got "
                                    f"{sorted(spec)}")  # fmt: skip
        data = load_pt_runs(spec["train_dir"], f"{name} training data")
        temps = [float(t) for t in data.temperatures_K]
        if ladder is None:
            ladder = temps
        elif temps != ladder:
            raise InvalidInputError(f"peptide {name} has the ladder {temps} K, not {ladder} K")
        pairs = [tuple(p) for p in cfg.pairs] if cfg.pairs else neighbour_pairs(len(temps))
        if spec.get("test_dir"):
            test = load_pt_runs(spec["test_dir"], f"{name} held-out data")
            train_sets, val_sets = make_pairs(data, pairs), make_pairs(test, pairs)
        else:
            n = min(len(f) for f in data.xyz_nm)
            cut = round(n * (1 - cfg.val_fraction))
            train_sets = make_pairs(data, pairs, slice(0, cut))
            val_sets = make_pairs(data, pairs, slice(cut, None))
        rep = make_representation(cfg.flow.representation, data.topology)
        used = sorted({t for p in pairs for t in p})
        fit_representation(rep, np.concatenate([np.asarray(data.xyz_nm[k]) for k in used]),
                           cfg.torsion_origin)
        energy = TorchEnergy.from_topology(data.topology, solvent=cfg.solvent).double()
        ref: dict[float, list] = {}
        for p in train_sets:
            ref.setdefault(p.t_source_K, []).append(p.u_x)
            ref.setdefault(p.t_target_K, []).append(p.u_y)
        sets.append(PeptideSet(
            name, data, train_sets, val_sets, TransportFlow(rep, core), energy.energy,
            {t: float(np.mean(np.concatenate(v))) for t, v in ref.items()},
        ))  # fmt: skip
    return sets


def _batch(ps: PeptideSet, size: int, rng: np.random.Generator):
    """``size`` random (x, y) of random pairs of one peptide, with per-sample temperatures."""
    q = rng.integers(len(ps.train_sets), size=size)
    xs, ys, ts, tt = [], [], [], []
    for k in range(len(ps.train_sets)):
        m = int((q == k).sum())
        if m == 0:
            continue
        p = ps.train_sets[k]
        xs.append(p.x[rng.integers(len(p.x), size=m)])
        ys.append(p.y[rng.integers(len(p.y), size=m)])
        ts += [p.t_source_K] * m
        tt += [p.t_target_K] * m
    f64 = torch.float64
    return (torch.cat(xs).double(), torch.cat(ys).double(), torch.tensor(ts, dtype=f64),
            torch.tensor(tt, dtype=f64))  # fmt: skip


@torch.no_grad()
def validate(sets: list[PeptideSet], n_pairs: int, chunk: int = 256) -> dict[str, float]:
    """Held-out swap acceptance (flow and naive) per peptide and pair, and their means."""
    from moltune.flow.swaps import acceptance_probability, log_acceptance_naive, propose_flow_swap
    from moltune.physics.units import beta

    out: dict[str, float] = {}
    acc_all, nai_all, nf_all = [], [], []
    for ps in sets:
        for p in ps.val_sets:
            n = min(n_pairs, len(p.x), len(p.y))
            ix = np.linspace(0, len(p.x) - 1, n).astype(int)
            iy = np.linspace(0, len(p.y) - 1, n).astype(int)
            b_s, b_t = float(beta(p.t_source_K)), float(beta(p.t_target_K))
            la, bad = [], []
            for a in range(0, n, chunk):
                sx, sy = ix[a : a + chunk], iy[a : a + chunk]
                prop = propose_flow_swap(
                    ps.flow, ps.energy, p.x[sx].double(), p.y[sy].double(), p.t_source_K,
                    p.t_target_K, b_s, b_t, p.u_x[sx], p.u_y[sy],
                )  # fmt: skip
                la.append(prop.log_alpha)
                bad.append(prop.nonfinite)
            acc = float(acceptance_probability(np.concatenate(la)).mean())
            naive = float(acceptance_probability(
                log_acceptance_naive(p.u_x[ix], p.u_y[iy], b_s, b_t)).mean())  # fmt: skip
            nf = float(np.concatenate(bad).mean())
            tag = f"{ps.name}_{p.t_source_K:g}_{p.t_target_K:g}"
            out[f"val/acceptance_flow_{tag}"] = acc
            out[f"val/acceptance_naive_{tag}"] = naive
            acc_all.append(acc)
            nai_all.append(naive)
            nf_all.append(nf)
    out["val/acceptance_flow"] = float(np.mean(acc_all))
    out["val/acceptance_naive"] = float(np.mean(nai_all))
    out["val/nonfinite_fraction"] = float(np.mean(nf_all))
    return out


def _checkpoint(path: Path, core, sets: list[PeptideSet], cfg: MultiTrainConfig, step: int,
                best: Path | None, score: float | None) -> None:  # fmt: skip
    from moltune.common.io import torch_save
    from moltune.flow.checkpoint import FORMAT, _pdb_text

    first = sets[0]
    sd = {f"flow.core.{k}": v.detach().clone() for k, v in core.state_dict().items()}
    sd.update({f"flow.representation.{k}": v.clone()
               for k, v in first.flow.representation.state_dict().items()})  # fmt: skip
    pairs = [[int(a) for a in p] for p in (cfg.pairs or [[i, i + 1] for i in
             range(len(first.data.temperatures_K) - 1)])]  # fmt: skip
    meta = {
        "format": FORMAT,
        "flow": cfg.flow.name,
        "name": f"{cfg.flow.name}/{cfg.flow.representation} ({'+'.join(s.name for s in sets)})",
        "flow_config": dataclasses.asdict(cfg.flow),
        "config": dataclasses.asdict(cfg),
        "topology_pdb": _pdb_text(first.data.topology, first.data.xyz_nm[0][0]),
        "temperatures_K": [float(t) for t in first.data.temperatures_K],
        "pairs": pairs,
        "pair": pairs[0],
        "train_data": str({s.name: cfg.peptides[s.name] for s in sets}),
        "test_data": None,
        "solvent": cfg.solvent,
        "peptides": [s.name for s in sets],
        "torsion_origin": cfg.torsion_origin,
        "score": score,
    }
    state = {
        "state_dict": sd,
        "hyper_parameters": {"moltune": meta},
        "global_step": int(step),
        "epoch": 0,
        "peptide_representations": {
            s.name: {k: v.clone() for k, v in s.flow.representation.state_dict().items()}
            for s in sets
        },
        "callbacks": {"ModelCheckpoint{multi_peptide}": {
            "best_model_path": str(best) if best else ""}},
    }  # fmt: skip
    torch_save(path, state)


def _init_core(spec: str, cfg: MultiTrainConfig) -> tuple[dict, dict, str]:
    """(core weights, flow_config, torsion origin) of a transport-flow checkpoint or run."""
    from moltune.flow.checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(spec)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    meta = state["hyper_parameters"]["moltune"]
    if meta["flow_config"].get("per_coordinate"):
        raise InvalidInputError(f"{ckpt}: a per-coordinate flow is peptide-specific; cannot "
                                "start a multi-peptide run from it")  # fmt: skip
    core = {k[len("flow.core."):]: v for k, v in state["state_dict"].items()
            if k.startswith("flow.core.")}  # fmt: skip
    return core, meta["flow_config"], meta.get("torsion_origin", "fitted")


def train_multi(cfg: MultiTrainConfig, out: str | Path, progress: bool = True) -> dict:
    """Train the shared core on every configured peptide into run folder ``out``; returns the
    summary (also ``train_summary.json``), with ``metrics.csv`` and ``plots/acceptance.png``."""
    import pandas as pd
    from tqdm.auto import tqdm

    from moltune.common.config import from_dict
    from moltune.common.io import atomic_path, write_json
    from moltune.common.run import RunDir
    from moltune.flow.losses import transport_terms
    from moltune.flow.models import count_parameters
    from moltune.flow.train import build_flow

    init_weights = None
    if cfg.init:
        init_weights, flow_cfg, origin = _init_core(cfg.init, cfg)
        cfg = dataclasses.replace(cfg, flow=from_dict(FlowConfig, flow_cfg, "flow"),
                                  torsion_origin=origin)  # the convention the core learned
    if cfg.flow.name != "tarflow" or cfg.flow.per_coordinate:
        raise InvalidInputError("multi-peptide training needs flow.name tarflow with "
                                "per_coordinate: false (that layer is peptide-specific)")  # fmt: skip
    torch.set_num_threads(max(1, int(cfg.threads)))
    torch.set_flush_denormal(True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    run = RunDir(Path(out))
    if (run.checkpoints / "last.ckpt").exists():
        raise InvalidInputError(f"{run.path} already holds a run; choose a new --out")
    run.write_config(cfg)

    first_dir = next(iter(cfg.peptides.values()))
    first_dir = first_dir["train_dir"] if isinstance(first_dir, dict) else first_dir
    core = build_flow(cfg.flow, load_pt_runs(first_dir, "training data").topology).core
    if init_weights is not None:
        core.load_state_dict(init_weights)
    sets = load_peptide_sets(cfg, core)
    opt = torch.optim.AdamW(core.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_fraction + (1 - cfg.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    rows: list[dict] = []
    best_score, best_path = -math.inf, run.checkpoints / "best.ckpt"

    def do_validate(step: int) -> None:
        nonlocal best_score
        core.eval()
        v = validate(sets, cfg.val_pairs)
        core.train()
        rows.append({"epoch": 0, "step": step, **v})
        log.info("step %d: val acceptance flow %.3f (naive %.3f)", step,
                 v["val/acceptance_flow"], v["val/acceptance_naive"])  # fmt: skip
        if v["val/acceptance_flow"] > best_score:
            best_score = v["val/acceptance_flow"]
            _checkpoint(best_path, core, sets, cfg, step, best_path, best_score)
        _checkpoint(run.checkpoints / "last.ckpt", core, sets, cfg, step, best_path, best_score)
        with atomic_path(run.metrics) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)

    t0 = time.time()
    do_validate(0)
    start = dict(rows[-1])
    skipped, step = 0, 0
    bar = tqdm(total=cfg.steps, desc="multi-peptide flow", disable=not progress, mininterval=2.0)
    core.train()
    while step < cfg.steps:
        if cfg.max_minutes and time.time() - t0 > 60.0 * cfg.max_minutes:
            break
        ps = sets[step % len(sets)]
        x, y, ts, tt = _batch(ps, cfg.batch_size, rng)
        u_s = torch.tensor([ps.u_ref[float(t)] for t in ts.tolist()], dtype=torch.float64)
        u_t = torch.tensor([ps.u_ref[float(t)] for t in tt.tolist()], dtype=torch.float64)
        terms = transport_terms(ps.flow, ps.energy, x, y, ts, tt, u_s, u_t, cfg.energy_cut_kT)
        loss_f, loss_i = terms.loss_forward.mean(), terms.loss_inverse.mean()
        loss = loss_f + loss_i
        opt.zero_grad()
        grad_norm = torch.tensor(float("nan"))
        if torch.isfinite(loss):
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(core.parameters(), cfg.grad_clip)
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            opt.step()
        else:
            opt.zero_grad()
            skipped += 1
        sched.step()
        step += 1
        bar.update(1)
        rows.append({"epoch": 0, "step": step, "train/loss": float(loss.detach()),
                     "train/loss_forward": float(loss_f.detach()),
                     "train/loss_inverse": float(loss_i.detach()),
                     "train/grad_norm": float(grad_norm), "train/skipped_steps": skipped,
                     "train/lr": sched.get_last_lr()[0], "train/peptide": ps.name})  # fmt: skip
        if step % cfg.val_every_steps == 0:
            do_validate(step)
    bar.close()
    if not rows or rows[-1].get("val/acceptance_flow") is None:
        do_validate(step)
    minutes = (time.time() - t0) / 60.0
    last = {k: v for k, v in rows[-1].items() if k.startswith("val/")}
    summary = {
        "steps": step, "minutes": minutes, "skipped_steps": skipped,
        "n_parameters": count_parameters(core), "peptides": [s.name for s in sets],
        "init": cfg.init, "best_val_acceptance_flow": best_score, "start": start, "last": last,
        "best_checkpoint": str(best_path),
    }  # fmt: skip
    write_json(run.path / "train_summary.json", summary)
    plot_multi(run.path)
    return summary


def plot_multi(run_path: str | Path) -> Path | None:
    """Validation acceptance (flow solid, naive dashed) per peptide and pair against step (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from moltune.common.io import atomic_path

    run_path = Path(run_path)
    if not (run_path / "metrics.csv").exists():
        return None
    df = pd.read_csv(run_path / "metrics.csv")
    cols = [c for c in df.columns if c.startswith("val/acceptance_flow_")]
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4))
    for n, c in enumerate(cols):
        d = df[["step", c]].dropna()
        line = a0.plot(d["step"], d[c], "o-", ms=3, label=c.removeprefix("val/acceptance_flow_"))
        naive = c.replace("flow", "naive")
        if naive in df:
            dn = df[["step", naive]].dropna()
            a0.plot(dn["step"], dn[naive], "--", color=line[0].get_color(), lw=0.8)
    a0.set_xlabel("step")
    a0.set_ylabel("validation swap acceptance (dashed: naive)")
    a0.set_ylim(0, 1)
    a0.legend(fontsize=6, ncol=2)
    if "train/loss" in df:
        d = df[["step", "train/loss"]].dropna()
        a1.plot(d["step"], d["train/loss"].rolling(20, min_periods=1).mean())
        a1.set_xlabel("step")
        a1.set_ylabel("train loss (kT, rolling mean of 20)")
    fig.tight_layout()
    path = run_path / "plots" / "acceptance.png"
    path.parent.mkdir(exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
