"""The baseline protocol for FiLM fine-tuning: does the protein embedding change anything?

On the same pockets with the same seeds it evaluates

1. ``pretrained``: the checkpoint without FiLM (the reference);
2. ``identity_film``: an identity-initialised adapter (gamma = 1, beta = 0). It must equal (1):
   with identical seeds the generated coordinates are identical, and the verdict says so;
3. ``random_film``: a randomly initialised adapter. It must be clearly worse (or at least
   different): if it is not, the adapter is not wired into the network;
4. every fine-tuned adapter given (``adapter-*.pt`` or a fine-tuning run folder), expected better.

Per seed, molecules are generated for every pocket (``n_samples`` each, pocket seeds shared by all
variants) and summarised (validity, connectivity, QED, SA, valid-and-connected). The
:class:`moltune.validation.controls.ControlProtocol` compares each variant with (1) (paired t-test
over seeds, Holm-adjusted; Hedges' g) on the primary metric; a side-by-side table gives every
metric with bootstrap CIs. The report names the checkpoint (path and sha256) and warns when the
validation set is too small to support a conclusion.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moltune.common.errors import (
    InputFileError,
    InvalidInputError,
    check_input_file,
    check_number,
    check_output_dir,
)
from moltune.common.io import sha256_file

log = logging.getLogger(__name__)

METRICS = ("validity", "connectivity", "valid_and_connected", "qed", "sa")


@dataclass
class BaselineConfig:
    checkpoint: str
    data: str  # processed folder (val.npz + embeddings/) or raw complexes
    out: str
    n_samples: int = 4
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    finetuned: list[str] = field(default_factory=list)
    split: str = "val"
    timesteps: int = 50
    num_atoms: str = "reference"
    metric: str = "valid_and_connected"
    film_hidden_dims: list[int] = field(default_factory=lambda: [128])
    random_film_seed: int = 12345
    # multiplies the random adapter's last layer: PyTorch's default init gives gamma ~ 1 +- 0.05,
    # a perturbation a memorising model shrugs off; the report states the resulting spread
    random_film_gain: float = 1.0
    min_pockets: int = 5
    max_pockets: int | None = None  # None: every pocket of the split
    pockets: list[str] = field(default_factory=list)  # only these complexes of the split
    embedding: str = "deterministic"
    batch_size: int = 16
    progress: bool = True
    threads: int = 0  # torch intra-op threads (0: leave as is)

    def __post_init__(self) -> None:
        """Refuse nonsense settings before any work (CLI flag names in the messages)."""
        if len(self.seeds) < 2:
            raise InvalidInputError("the protocol needs at least two seeds (seed-to-seed variance)")
        if len(set(self.seeds)) != len(self.seeds):
            raise InvalidInputError(f"--seeds must be different seeds, got {list(self.seeds)}")
        if self.metric not in METRICS:
            raise InvalidInputError(f"metric must be one of {METRICS}")
        check_number("--n-samples", self.n_samples, minimum=1)
        check_number("--timesteps", self.timesteps, minimum=1)
        check_number("--random-film-gain", float(self.random_film_gain), minimum=0)
        if self.max_pockets is not None:
            check_number("--max-pockets", self.max_pockets, minimum=1)
        check_number("--threads", self.threads, minimum=0)
        check_number("--batch-size", self.batch_size, minimum=1)
        for d in self.film_hidden_dims:
            check_number("--film-hidden-dims", d, minimum=1)


def resolve_adapter(spec: str) -> Path:
    """An adapter file, or a fine-tuning run folder (its best, else last, adapter)."""
    p = Path(spec)
    if p.is_dir():
        for name in ("adapter-best.pt", "adapter-last.pt"):
            if (p / "checkpoints" / name).is_file():
                return p / "checkpoints" / name
        raise InvalidInputError(f"{p}: no checkpoints/adapter-best.pt or adapter-last.pt")
    if not p.is_file():
        raise InvalidInputError(f"fine-tuned adapter {p} does not exist")
    return p


def load_items(cfg: BaselineConfig) -> tuple[list[dict[str, Any]], Path]:
    from moltune.sbdd.data import load_processed_split

    d = Path(cfg.data)
    if not (d / f"{cfg.split}.npz").is_file():
        if (d / "train.npz").is_file():
            raise InvalidInputError(f"{d} has no {cfg.split}.npz")
        from moltune.sbdd.data import process_complexes

        target = Path(cfg.out) / "data"
        if not (target / f"{cfg.split}.npz").is_file():
            process_complexes(d, target, embedding=cfg.embedding, progress=cfg.progress)
        d = target
    items = load_processed_split(d, cfg.split)
    if cfg.pockets:
        missing = set(cfg.pockets) - {x["name"] for x in items}
        if missing:
            raise InvalidInputError(f"pockets {sorted(missing)} not in {d}/{cfg.split}.npz")
        items = [x for x in items if x["name"] in set(cfg.pockets)]
    if cfg.max_pockets is not None:
        items = items[: cfg.max_pockets]
    if not items:
        raise InvalidInputError(f"{d}/{cfg.split}.npz holds no complexes")
    if any(x.get("embedding") is None for x in items):
        raise InvalidInputError(f"{d}: complexes without embeddings (embeddings/<id>.npy)")
    return items, d


def random_description(cfg: BaselineConfig, adapter, items) -> str:
    """Name of the random control with the spread of its gamma / beta on the evaluated pockets."""
    text = f"random FiLM (seed {cfg.random_film_seed}"
    if cfg.random_film_gain != 1.0:
        text += f", gain {cfg.random_film_gain:g}"
    embs = [d.get("embedding") for d in (items or [])]
    if embs and all(e is not None for e in embs):
        with torch.no_grad():
            gamma, beta = adapter(torch.as_tensor(np.stack(embs), dtype=torch.float32))
        text += (f"; gamma std {float(gamma.std(unbiased=False)):.3f}, "
                 f"|gamma - 1| max {float((gamma - 1).abs().max()):.3f}, "
                 f"beta std {float(beta.std(unbiased=False)):.3f}")
    return text + ")"


def make_variants(cfg: BaselineConfig, items=None) -> list[tuple[str, str, str, Any]]:
    """(name, expected, description, model) for every variant."""
    from moltune.sbdd.film import FiLMAdapter, FiLMConfig, load_adapter
    from moltune.sbdd.model import LigandDiffusionModel

    base = LigandDiffusionModel.from_checkpoint(cfg.checkpoint)
    j = base.joint_nf
    hidden = tuple(cfg.film_hidden_dims)
    rnd = FiLMAdapter(FiLMConfig(joint_nf=j, hidden_dims=hidden, init="random"),
                      seed=cfg.random_film_seed)
    if cfg.random_film_gain != 1.0:
        with torch.no_grad():
            rnd.last.weight.mul_(cfg.random_film_gain)
            rnd.last.bias.mul_(cfg.random_film_gain)

    def with_film(adapter):
        m = LigandDiffusionModel.from_checkpoint(cfg.checkpoint)
        m.set_film(adapter)
        return m.eval()

    out = [
        ("pretrained", "reference", "checkpoint without FiLM", base),
        ("identity_film", "equal", "identity FiLM (gamma=1, beta=0)",
         with_film(FiLMAdapter(FiLMConfig(joint_nf=j, hidden_dims=hidden, init="identity"),
                               seed=cfg.random_film_seed))),
        ("random_film", "worse", random_description(cfg, rnd, items),
         with_film(rnd)),
    ]
    for i, spec in enumerate(cfg.finetuned):
        path = resolve_adapter(spec)
        name = f"finetuned_{i + 1}" if len(cfg.finetuned) > 1 else "finetuned"
        out.append((name, "better", f"fine-tuned adapter {path}", with_film(load_adapter(path))))
    return out


#: Secondary, continuous metric (lower is better): type-agnostic, centroid-aligned Hungarian RMSD
#: (Å) of each generated ligand to its pocket's reference ligand. Unlike validity it still moves
#: when the reference model is at the floor of the primary metric.
GEOMETRY_METRIC = "rmsd_to_reference_A"

#: Below this mean of the primary metric the reference is "at the floor": worse cannot be shown.
FLOOR = 0.05


def rmsd_to_reference(coords_A: np.ndarray, ref_A: np.ndarray) -> float:
    """Centroid-aligned RMSD (Å) under the best one-to-one atom assignment (no rotation: the
    pocket frame fixes the orientation); atoms beyond the smaller count are ignored."""
    from scipy.optimize import linear_sum_assignment

    x = np.asarray(coords_A, float)
    r = np.asarray(ref_A, float)
    if not len(x) or not len(r):
        return float("nan")
    x = x - x.mean(0)
    r = r - r.mean(0)
    cost = ((x[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    i, j = linear_sum_assignment(cost)
    return float(np.sqrt(cost[i, j].mean()))


def _coords(gens) -> list[np.ndarray]:
    return [lig.coords_A for _, ligs in gens for lig in ligs]


def run_baselines(cfg: BaselineConfig) -> dict[str, Any]:
    """Evaluate every variant on every seed; write the report; return the results dict."""
    from moltune.common.io import write_json, write_text
    from moltune.common.run import package_versions
    from moltune.sbdd.evaluation import generate_for_pockets, molecule_rows, summarise_rows
    from moltune.validation.controls import ControlProtocol, Variant, write_report
    from moltune.validation.stats import bootstrap_ci

    check_output_dir(cfg.out)
    check_input_file(cfg.checkpoint, "checkpoint")
    if not Path(cfg.data).is_dir():
        raise InputFileError(f"data folder not found: {cfg.data}")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    items, data_dir = load_items(cfg)
    variants = make_variants(cfg, items)
    per_seed: dict[str, dict[str, list[float]]] = {v[0]: {m: [] for m in (*METRICS,
                                                                         GEOMETRY_METRIC)}
                                                   for v in variants}
    refs = {str(d["name"]): np.asarray(d["lig_coords"], float) for d in items}
    coords: dict[str, dict[int, list[np.ndarray]]] = {v[0]: {} for v in variants}
    rows_out = []
    for name, _, _, model in variants:
        for seed in cfg.seeds:
            gens = generate_for_pockets(model, items, cfg.n_samples, cfg.timesteps, seed,
                                        cfg.num_atoms, cfg.batch_size, progress=cfg.progress)
            coords[name][seed] = _coords(gens)
            all_rows = []
            for pocket, ligs in gens:
                rows, _ = molecule_rows(ligs)
                for k, (r, lig) in enumerate(zip(rows, ligs)):
                    r.update(variant=name, seed=seed, pocket=pocket, sample=k)
                    r[GEOMETRY_METRIC] = rmsd_to_reference(lig.coords_A, refs[pocket])
                all_rows.extend(rows)
            per_seed[name][GEOMETRY_METRIC].append(
                float(np.nanmean([r[GEOMETRY_METRIC] for r in all_rows])))
            s = summarise_rows(all_rows)
            for m in METRICS:
                v = s.get(m)
                per_seed[name][m].append(float("nan") if v is None else float(v))
            rows_out.extend({k: r.get(k) for k in ("variant", "seed", "pocket", "sample", "valid",
                                                   "connected", "qed", "sa", "smiles",
                                                   GEOMETRY_METRIC)}
                            for r in all_rows)
            log.info("%s seed %d: %s", name, seed,
                     ", ".join(f"{m}={per_seed[name][m][-1]:.3f}" for m in METRICS))

    # exactness: coordinates of each variant against the pretrained model, same seeds
    def max_diff(a: str) -> float:
        d = 0.0
        for seed in cfg.seeds:
            for x, y in zip(coords[a][seed], coords["pretrained"][seed]):
                d = max(d, float(np.abs(x - y).max()) if len(x) else 0.0)
        return d

    exact = {name: max_diff(name) for name, *_ in variants if name != "pretrained"}
    protocol = ControlProtocol(
        metric=cfg.metric, seeds=list(cfg.seeds), paired=True, higher_is_better=True,
        variants=[Variant(name=n, expected=e, description=d, values=per_seed[n][cfg.metric])
                  for n, e, d, _ in variants])
    report = protocol.run()
    files = write_report(report, out)

    # verdict adjustments the statistics cannot make alone
    verdicts = {r.name: (r.verdict, r.reason) for r in report.results}
    if exact["identity_film"] <= 1e-6:
        verdicts["identity_film"] = ("pass", f"identical to pretrained with the same seeds "
                                     f"(max |dx| = {exact['identity_film']:.2g} Å); "
                                     + verdicts["identity_film"][1])
    else:
        verdicts["identity_film"] = (
            verdicts["identity_film"][0] if verdicts["identity_film"][0] == "fail" else "fail",
            f"identity FiLM changed the samples (max |dx| = {exact['identity_film']:.3g} Å): "
            "the adapter is not an exact no-op")
    geometry = ControlProtocol(
        metric=GEOMETRY_METRIC, seeds=list(cfg.seeds), paired=True, higher_is_better=False,
        variants=[Variant(name=n, expected=e, description=d, values=per_seed[n][GEOMETRY_METRIC])
                  for n, e, d, _ in variants]).run()
    geo = {r.name: r for r in geometry.results}
    ref_primary = float(np.nanmean(per_seed["pretrained"][cfg.metric]))
    at_floor = cfg.metric != "sa" and ref_primary <= FLOOR
    stat_verdict, stat_reason = verdicts["random_film"]
    g = geo["random_film"]
    geo_text = (f"{GEOMETRY_METRIC} {np.nanmean(per_seed['random_film'][GEOMETRY_METRIC]):.3g} vs "
                f"{np.nanmean(per_seed['pretrained'][GEOMETRY_METRIC]):.3g} Å (p_adj = "
                f"{_fmt(g.p_adjusted)}, g = {_fmt(g.hedges_g)})")
    if exact["random_film"] == 0.0:
        verdicts["random_film"] = ("fail", "random FiLM produced exactly the pretrained samples: "
                                   "the adapter is not wired into the network")
    elif stat_verdict == "pass":
        pass
    elif g.verdict == "pass":
        floor = (f"the reference is at the floor of {cfg.metric} ({ref_primary:.3f}), so worse "
                 "cannot show there; " if at_floor else f"not shown worse on {cfg.metric} "
                 f"({stat_reason}); ")
        verdicts["random_film"] = ("pass", floor + "significantly further from the reference "
                                   "ligands: " + geo_text)
    elif "better" not in stat_reason:
        verdicts["random_film"] = (
            "inconclusive", f"the adapter is wired in (samples differ, max |dx| = "
            f"{exact['random_film']:.3g} Å) but shown worse neither on {cfg.metric} "
            f"({stat_reason}) nor on {geo_text}")

    table = []
    for n, e, d, _ in variants:
        row = {"variant": n, "expected": e, "description": d,
               "max_abs_dx_vs_pretrained_A": exact.get(n, 0.0),
               "verdict": verdicts.get(n, ("reference", ""))[0],
               "reason": verdicts.get(n, ("reference", ""))[1]}
        for m in (*METRICS, GEOMETRY_METRIC):
            vals = per_seed[n][m]
            lo, hi = bootstrap_ci(vals)
            row[m] = {"mean": float(np.nanmean(vals)) if np.isfinite(vals).any() else None,
                      "ci": [lo, hi], "per_seed": vals}
        res = next(r for r in report.results if r.name == n)
        row["effect"] = {"metric": cfg.metric, "diff": res.diff, "diff_ci": [res.diff_ci_low,
                         res.diff_ci_high], "hedges_g": res.hedges_g,
                         "g_ci": [res.g_ci_low, res.g_ci_high], "p_adjusted": res.p_adjusted}
        gr = geo[n]
        row["effect_geometry"] = {"metric": GEOMETRY_METRIC, "diff": gr.diff,
                                  "diff_ci": [gr.diff_ci_low, gr.diff_ci_high],
                                  "hedges_g": gr.hedges_g, "p_adjusted": gr.p_adjusted}
        table.append(row)

    warnings = []
    if len(items) < cfg.min_pockets:
        warnings.append(
            f"only {len(items)} {cfg.split} pocket(s) (< {cfg.min_pockets}): the per-seed values "
            "describe these pockets only; no conclusion about the protein embedding in general is "
            "supported. Seeds measure sampling noise, not variation between proteins.")
    if at_floor:
        warnings.append(
            f"the pretrained model is at the floor of {cfg.metric} (mean {ref_primary:.3f}): "
            f"no variant can be shown worse on it; the random-FiLM control relies on "
            f"{GEOMETRY_METRIC}.")
    # controls: identity must pass; random FiLM must at least be detected as different
    # Both controls must pass; a random adapter that is wired in but not shown worse leaves the
    # protocol inconclusive (this checkpoint cannot tell a working adapter from a useless one).
    ident_v, rand_v = verdicts["identity_film"][0], verdicts["random_film"][0]
    controls = ("fail" if "fail" in (ident_v, rand_v) else
                "pass" if ident_v == rand_v == "pass" else "inconclusive")
    passed = controls == "pass"
    result = {
        "checkpoint": str(cfg.checkpoint), "checkpoint_sha256": sha256_file(cfg.checkpoint),
        "data": str(data_dir), "split": cfg.split, "pockets": [d["name"] for d in items],
        "n_samples_per_pocket": cfg.n_samples, "seeds": list(cfg.seeds),
        "timesteps": cfg.timesteps, "num_atoms": cfg.num_atoms, "primary_metric": cfg.metric,
        "controls_passed": passed, "controls": controls, "warnings": warnings, "table": table,
        "finetuned": [str(resolve_adapter(f)) for f in cfg.finetuned],
        "files": {k: str(v) for k, v in files.items()}, "versions": package_versions(),
    }
    write_json(out / "baselines.json", result)
    write_json(out / "samples.json", rows_out)
    write_text(out / "baselines.md", to_markdown(result))
    return result


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    x = float(x)
    return "n/a" if not math.isfinite(x) else f"{x:.3f}"


def to_markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Baseline protocol (FiLM adapter)", "",
        f"- checkpoint: `{r['checkpoint']}` (sha256 {r['checkpoint_sha256'][:16]}…)",
        f"- pockets ({r['split']}, {len(r['pockets'])}): {', '.join(r['pockets'])}; "
        f"{r['n_samples_per_pocket']} samples per pocket per seed; seeds {r['seeds']}; "
        f"{r['timesteps']} denoising steps; ligand size: {r['num_atoms']}",
        f"- primary metric: `{r['primary_metric']}`; paired t-test over seeds vs `pretrained`, "
        "Holm-adjusted; Hedges' g; 95% bootstrap CIs over seeds",
        f"- controls (identity = pretrained, random FiLM worse): "
        f"**{r.get('controls', 'pass' if r['controls_passed'] else 'fail').upper()}**", "",
    ]
    for w in r["warnings"]:
        lines += [f"> WARNING: {w}", ""]
    cols = (*METRICS, GEOMETRY_METRIC)
    head = "| variant | expected | " + " | ".join(cols) + \
        " | diff vs pretrained [95% CI] | Hedges' g | p adj | max abs dx (Å) | verdict |"
    lines += [head, "|" + "---|" * (len(cols) + 7)]
    for t in r["table"]:
        cells = [f"{_fmt(t[m]['mean'])} [{_fmt(t[m]['ci'][0])}, {_fmt(t[m]['ci'][1])}]"
                 for m in cols if m in t]
        e = t["effect"]
        diff = ("" if e["diff"] is None else
                f"{_fmt(e['diff'])} [{_fmt(e['diff_ci'][0])}, {_fmt(e['diff_ci'][1])}]")
        lines.append(f"| {t['variant']} | {t['expected']} | " + " | ".join(cells) +
                     f" | {diff} | {_fmt(e['hedges_g'])} | {_fmt(e['p_adjusted'])} | "
                     f"{t['max_abs_dx_vs_pretrained_A']:.3g} | **{t['verdict']}** |")
    lines += ["", f"Effect on {GEOMETRY_METRIC} (lower is better; paired over seeds, Holm):"]
    for t in r["table"]:
        e = t.get("effect_geometry")
        if e and e["diff"] is not None and t["expected"] != "reference":
            lines.append(f"- {t['variant']}: diff {_fmt(e['diff'])} Å [{_fmt(e['diff_ci'][0])}, "
                         f"{_fmt(e['diff_ci'][1])}], Hedges' g {_fmt(e['hedges_g'])}, "
                         f"p adj {_fmt(e['p_adjusted'])}")
    lines += ["", "Verdicts:"]
    for t in r["table"]:
        if t["expected"] != "reference":
            lines.append(f"- {t['variant']}: {t['verdict']} — {t['reason']}")
    return "\n".join(lines) + "\n"
