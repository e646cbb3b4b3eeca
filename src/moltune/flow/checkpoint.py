"""Flow checkpoints: atomic writing (Lightning plugin) and weights-only loading.

A training checkpoint (``RUN/checkpoints/*.ckpt``) is a Lightning checkpoint whose
``hyper_parameters["moltune"]`` holds everything needed to rebuild the flow without pickle:
the flow config, the topology as PDB text, the temperature ladder, the trained pairs and the
data folders. :func:`load_flow` reads it with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from moltune.common.errors import CheckpointError, InputFileError
from moltune.common.io import torch_save

FORMAT = "moltune-transport-flow/1"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint writer that renames a complete temporary file into place."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch_save(path, checkpoint)


def _pdb_text(topology, positions_nm) -> str:
    from openmm import app, unit

    buf = io.StringIO()
    app.PDBFile.writeFile(topology, positions_nm * unit.nanometer, buf)
    return buf.getvalue()


def flow_metadata(cfg, train_data, pairs) -> dict[str, Any]:
    """Plain-data description of a run (goes into every checkpoint)."""
    t = [float(v) for v in train_data.temperatures_K]
    return {
        "format": FORMAT,
        "flow": cfg.flow.name,
        "name": f"{cfg.flow.name}/{cfg.flow.representation}",
        "flow_config": dataclasses.asdict(cfg.flow),
        "config": dataclasses.asdict(cfg),
        "topology_pdb": _pdb_text(train_data.topology, train_data.xyz_nm[0][0]),
        "temperatures_K": t,
        "pairs": [list(map(int, p)) for p in pairs],
        "pair": list(map(int, pairs[0])),
        "train_data": str(cfg.data.train_dir),
        "test_data": str(cfg.data.test_dir) if cfg.data.test_dir else None,
        "solvent": cfg.solvent,
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
    state = torch.load(last, map_location="cpu", weights_only=True)
    for key, value in state.get("callbacks", {}).items():
        if "ModelCheckpoint" in key and value.get("best_model_path"):
            best = Path(value["best_model_path"])
            best = best if best.exists() else ckdir / best.name
            if best.exists():
                return best
    return last


def load_flow(path: str | Path, map_location: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """(flow in eval mode, info) from a run folder or checkpoint, loaded weights-only."""
    from openmm import app

    from moltune.common.config import from_dict
    from moltune.flow.train import FlowConfig, build_flow

    ckpt = resolve_checkpoint(path)
    try:
        state = torch.load(ckpt, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{ckpt} is not a readable weights-only checkpoint: {exc}") from exc
    meta = (state.get("hyper_parameters") or {}).get("moltune")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{ckpt} is not a moltune transport-flow checkpoint")
    topology = app.PDBFile(io.StringIO(meta["topology_pdb"])).topology
    try:
        cfg = from_dict(FlowConfig, meta["flow_config"], "flow")
    except KeyError as exc:  # written by another moltune version
        raise CheckpointError(f"{ckpt}: flow settings this version does not know ({exc})") from exc
    flow = build_flow(cfg, topology)
    weights = {
        k[len("flow.") :]: v for k, v in state["state_dict"].items() if k.startswith("flow.")
    }
    missing, unexpected = flow.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith("representation._level")]
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt}: layout mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    flow.eval()
    info = dict(meta)
    info.update(path=str(ckpt), step=state.get("global_step"), epoch=state.get("epoch"))
    info["topology"] = topology
    return flow, info
