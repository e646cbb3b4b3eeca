"""Safe loading and writing of DiffSBDD (Lightning) checkpoints.

A DiffSBDD checkpoint stores its hyper-parameters with ``argparse.Namespace`` objects, which
PyTorch's weights-only unpickler rejects by default. We allow-list exactly that class (plus what
weights-only loading already accepts: tensors, containers, numbers, strings) and never fall back to
arbitrary pickle unless the caller explicitly says the file is trusted. A file that is not a
checkpoint, or a checkpoint whose state dict does not have the layout the hyper-parameters imply,
raises :class:`~moltune.common.errors.CheckpointError` naming what is wrong.
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from moltune.common.errors import CheckpointError, InputFileError
from moltune.common.io import torch_save

#: The only non-default classes a DiffSBDD checkpoint needs for weights-only unpickling.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)

#: Hyper-parameter groups stored as ``argparse.Namespace`` in DiffSBDD checkpoints.
NAMESPACE_GROUPS = ("egnn_params", "diffusion_params", "eval_params", "loss_params")

STATE_PREFIX = "ddpm."


@dataclass
class DiffSBDDCheckpoint:
    """The parts of a DiffSBDD checkpoint we use.

    ``state_dict`` keeps the original keys (``ddpm.`` prefix); ``hyper_parameters`` is the
    original dict with every ``argparse.Namespace`` turned into a plain dict; ``raw_hyper_parameters``
    is the untouched object (written back when saving a DiffSBDD-layout file).
    """

    state_dict: dict[str, torch.Tensor]
    hyper_parameters: dict[str, Any]
    raw_hyper_parameters: dict[str, Any]
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _plain(value: Any) -> Any:
    if isinstance(value, argparse.Namespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def read_checkpoint_file(path: str | Path, trust: bool = False) -> Any:
    """``torch.load`` a file weights-only with :data:`SAFE_GLOBALS` allow-listed.

    ``trust=True`` (never the default) allows full unpickling, for a file you made yourself.
    Raises InputFileError for a missing file, CheckpointError for anything unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"checkpoint {path} does not exist or is not a file")
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused to unpickle (weights-only loading allows tensors, plain containers "
            f"and argparse.Namespace only): {first}"
        ) from exc
    except Exception as exc:  # a corrupt file makes the unpickler raise anything (IndexError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {first}") from exc


def load_checkpoint(path: str | Path, trust: bool = False) -> DiffSBDDCheckpoint:
    """Read a DiffSBDD Lightning checkpoint (weights-only) and check its top-level structure.

    The state-dict layout is checked against the model the hyper-parameters describe when the
    model is built (:meth:`moltune.sbdd.model.LigandDiffusionModel.from_checkpoint`).
    """
    obj = read_checkpoint_file(path, trust=trust)
    path = Path(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} is not a DiffSBDD checkpoint: top level is a {type(obj).__name__}, expected a "
            "dict with 'state_dict' and 'hyper_parameters'"
        )
    missing = [k for k in ("state_dict", "hyper_parameters") if k not in obj]
    if missing:
        raise CheckpointError(
            f"{path} is not a DiffSBDD checkpoint: missing top-level key(s) {missing}; "
            f"found {sorted(map(str, obj.keys()))[:12]}"
        )
    sd = obj["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of names to tensors")
    raw_hp = obj["hyper_parameters"]
    if not isinstance(raw_hp, Mapping):
        raise CheckpointError(f"{path}: 'hyper_parameters' is a {type(raw_hp).__name__}, not a dict")
    hp = _plain(dict(raw_hp))
    missing_hp = [k for k in ("egnn_params", "diffusion_params") if k not in hp]
    if missing_hp:
        raise CheckpointError(f"{path}: hyper_parameters lack {missing_hp}")
    meta = {k: obj[k] for k in ("epoch", "global_step", "pytorch-lightning_version") if k in obj}
    return DiffSBDDCheckpoint(
        state_dict=dict(sd), hyper_parameters=hp, raw_hyper_parameters=dict(raw_hp), path=path,
        meta=meta,
    )


def check_layout(
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    actual: Mapping[str, torch.Tensor],
    where: str = "checkpoint",
    max_listed: int = 8,
) -> None:
    """Raise CheckpointError listing missing/unexpected keys and shape mismatches."""
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(actual[k].shape)} vs model {tuple(expected[k])}"
        for k in expected
        if k in actual and tuple(actual[k].shape) != tuple(expected[k])
    ]
    if not (missing or unexpected or mismatched):
        return

    def _list(items: list[str]) -> str:
        shown = ", ".join(items[:max_listed])
        more = f" (+{len(items) - max_listed} more)" if len(items) > max_listed else ""
        return shown + more

    parts = []
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatch(es): {_list(mismatched)}")
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_list(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_list(unexpected)}")
    raise CheckpointError(
        f"{where} does not have the DiffSBDD conditional full-atom layout its hyper-parameters "
        f"describe: " + "; ".join(parts)
    )


def check_tied(state_dict: Mapping[str, torch.Tensor], pairs: list[tuple[str, str]],
               where: str = "checkpoint") -> None:
    """Tensors stored under two names must hold the same values (DiffSBDD shares them)."""
    for a, b in pairs:
        if a in state_dict and b in state_dict and not torch.equal(state_dict[a], state_dict[b]):
            diff = (state_dict[a].double() - state_dict[b].double()).abs().max().item()
            raise CheckpointError(
                f"{where}: {a} and {b} must be one shared tensor but differ (max |diff| {diff:.3g})"
            )


def to_namespaces(hp: Mapping[str, Any]) -> dict[str, Any]:
    """Hyper-parameters as DiffSBDD stores them: the parameter groups as ``argparse.Namespace``."""
    out = dict(hp)
    for key in NAMESPACE_GROUPS:
        if isinstance(out.get(key), Mapping):
            out[key] = argparse.Namespace(**out[key])
    return out


def save_checkpoint(path: str | Path, state_dict: Mapping[str, torch.Tensor],
                    hyper_parameters: Mapping[str, Any], epoch: int = 0,
                    global_step: int = 0) -> Path:
    """Write a Lightning-style checkpoint with the DiffSBDD layout (atomically).

    ``state_dict`` must already carry the ``ddpm.`` prefix; both names of each tied tensor are
    written, as DiffSBDD does.
    """
    import lightning

    obj = {
        "epoch": int(epoch),
        "global_step": int(global_step),
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "loops": {},
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": to_namespaces(hyper_parameters),
    }
    return torch_save(path, obj)
