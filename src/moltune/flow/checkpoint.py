"""Flow checkpoints: the flow's config, its metadata, and the one reader (weights-only).

A training checkpoint (``RUN/checkpoints/*.ckpt``) is a Lightning checkpoint whose
``hyper_parameters["moltune"]`` holds everything needed to rebuild the flow without pickle:
the flow config, the topology as PDB text, the temperature ladder, the trained pairs and the
data folders. :func:`load_flow` reads it with ``torch.load(weights_only=True)``; it is the only
reader of this format (training imports from here, never the reverse).
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moltune.common.errors import CheckpointError, InputFileError
from moltune.common.training import AtomicCheckpointIO

__all__ = ["AtomicCheckpointIO", "FlowConfig", "build_flow", "flow_metadata", "load_flow",
           "resolve_checkpoint"]  # fmt: skip

FORMAT = "moltune-transport-flow/1"


@dataclass
class FlowConfig:
    """Which flow: ``baseline_ic``, ``spline_ic`` or ``tarflow`` over ``internal`` or ``cartesian`` coordinates."""

    name: str = "tarflow"
    representation: str = "internal"
    n_blocks: int = 4
    d_model: int = 32
    n_layers: int = 1
    n_heads: int = 4
    mlp_ratio: int = 2
    scale_bound: float = 1.0
    atom_embeddings: bool = True
    per_coordinate: bool = True  # a per-coordinate (baseline-style) layer before the blocks
    spline_bins: int = 0  # > 0: RQ spline slot maps with this many bins (moltune.flow.splines)
    couplings: int = 0  # spline_ic: coupling spline layers after the per-coordinate ones
    coupling_hidden: int = 128  # width of their conditioner MLPs


def build_flow(cfg: FlowConfig, topology) -> torch.nn.Module:
    """The configured flow (untrained; fit ``flow.representation`` before training)."""
    from moltune.flow.models import make_flow

    kwargs: dict[str, Any] = {"spline_bins": cfg.spline_bins}
    if cfg.name == "spline_ic":
        kwargs.update(couplings=cfg.couplings, coupling_hidden=cfg.coupling_hidden)
    if cfg.name == "tarflow":
        kwargs = {
            "n_blocks": cfg.n_blocks, "d_model": cfg.d_model, "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads, "mlp_ratio": cfg.mlp_ratio, "scale_bound": cfg.scale_bound,
            "atom_embeddings": cfg.atom_embeddings, "per_coordinate": cfg.per_coordinate,
            "spline_bins": cfg.spline_bins,
        }  # fmt: skip
    return make_flow(cfg.name, topology, cfg.representation, **kwargs)


def _pdb_text(topology, positions_nm) -> str:
    from openmm import app, unit

    buf = io.StringIO()
    app.PDBFile.writeFile(topology, positions_nm * unit.nanometer, buf)
    return buf.getvalue()


def flow_metadata(cfg, train_data, pairs, peptides: list[str] | None = None) -> dict[str, Any]:
    """Plain-data description of a run (goes into every checkpoint): ``train_data`` and the
    topology are the first peptide's; ``peptides`` names every peptide the run trains."""
    t = [float(v) for v in train_data.temperatures_K]
    several = f" ({'+'.join(peptides)})" if peptides and len(peptides) > 1 else ""
    return {
        "format": FORMAT,
        "flow": cfg.flow.name,
        "name": f"{cfg.flow.name}/{cfg.flow.representation}{several}",
        "flow_config": dataclasses.asdict(cfg.flow),
        "config": dataclasses.asdict(cfg),
        "topology_pdb": _pdb_text(train_data.topology, train_data.xyz_nm[0][0]),
        "temperatures_K": t,
        "pairs": [list(map(int, p)) for p in pairs],
        "pair": list(map(int, pairs[0])),
        "train_data": str(cfg.data.peptides or cfg.data.train_dir),
        "test_data": str(cfg.data.test_dir) if cfg.data.test_dir else None,
        "solvent": cfg.solvent,
        "peptides": list(peptides) if peptides else None,
        "torsion_origin": cfg.torsion_origin,
    }


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or for a run folder its best checkpoint (else ``last.ckpt``)."""
    path = Path(path)
    if path.is_file():
        return path
    ckdir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    last = ckdir / "last.ckpt"
    if not last.exists():
        raise InputFileError(f"no checkpoint found in {path} (expected {last})")
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{last} is not a readable weights-only checkpoint: {exc}") from exc
    for key, value in state.get("callbacks", {}).items():
        if "ModelCheckpoint" in key and value.get("best_model_path"):
            best = Path(value["best_model_path"])
            best = best if best.exists() else ckdir / best.name
            if best.exists():
                return best
    return last


def read_flow_checkpoint(path: str | Path, map_location: str = "cpu"):
    """(checkpoint path, moltune metadata, FlowConfig, flow weights) of a run folder or
    checkpoint, loaded weights-only: the one reader of transport-flow checkpoints."""
    from moltune.common.config import from_dict

    ckpt = resolve_checkpoint(path)
    try:
        state = torch.load(ckpt, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{ckpt} is not a readable weights-only checkpoint: {exc}") from exc
    meta = (state.get("hyper_parameters") or {}).get("moltune")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{ckpt} is not a moltune transport-flow checkpoint")
    try:
        cfg = from_dict(FlowConfig, meta["flow_config"], "flow")
    except KeyError as exc:  # written by another moltune version
        raise CheckpointError(f"{ckpt}: flow settings this version does not know ({exc})") from exc
    weights = {
        k[len("flow.") :]: v for k, v in state["state_dict"].items() if k.startswith("flow.")
    }
    meta = dict(meta, path=str(ckpt), step=state.get("global_step"), epoch=state.get("epoch"))
    return ckpt, meta, cfg, weights


def load_flow(path: str | Path, map_location: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """(flow in eval mode, info) from a run folder or checkpoint, loaded weights-only."""
    from openmm import app

    ckpt, info, cfg, weights = read_flow_checkpoint(path, map_location)
    topology = app.PDBFile(io.StringIO(info["topology_pdb"])).topology
    flow = build_flow(cfg, topology)
    missing, unexpected = flow.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith("representation._level")]
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt}: layout mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    flow.eval()
    info["topology"] = topology
    return flow, info
