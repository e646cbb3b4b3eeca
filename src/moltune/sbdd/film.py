"""FiLM adapter: a per-pocket embedding (e.g. ESM-C, 960 values) -> scale gamma and shift beta.

The adapter maps an embedding [B, E] through an MLP to 2 * joint_nf numbers and returns
``gamma = 1 + out[:, :J]`` and ``beta = out[:, J:]``; the dynamics network applies
``h' = gamma * h + beta`` to the joint ligand+pocket features after the encoders and before the
time feature is appended. With ``init="identity"`` the last layer is zero, so gamma is exactly 1
and beta exactly 0 (an exact no-op, whatever the embedding); ``init="random"`` keeps PyTorch's
default initialisation of the last layer (a control).

Adapter-only checkpoints (:func:`save_adapter` / :func:`load_adapter`) hold the config and the
adapter state dict as plain types, so they load with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from moltune.common.errors import CheckpointError
from moltune.common.io import torch_save

ADAPTER_FORMAT = "moltune.sbdd.film_adapter"
ADAPTER_VERSION = 1


@dataclass
class FiLMConfig:
    """Adapter shape: ``embedding_dim -> hidden_dims... -> 2 * joint_nf``."""

    embedding_dim: int = 960
    hidden_dims: tuple[int, ...] = (128,)
    joint_nf: int = 32
    dropout: float = 0.0
    activation: str = "silu"  # silu | relu | gelu
    init: str = "identity"  # identity | random

    def __post_init__(self):
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        if self.init not in ("identity", "random"):
            raise ValueError(f"FiLM init must be 'identity' or 'random', got {self.init!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"FiLM activation must be one of {sorted(_ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"FiLM dropout must be in [0, 1), got {self.dropout}")


_ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}


class FiLMAdapter(nn.Module):
    """MLP embedding -> (gamma [B, J], beta [B, J]); see the module docstring."""

    def __init__(self, config: FiLMConfig | None = None, seed: int | None = None, **kwargs):
        super().__init__()
        config = config or FiLMConfig(**kwargs)
        self.config = config
        dims = (config.embedding_dim, *config.hidden_dims, 2 * config.joint_nf)
        layers: list[nn.Module] = []
        gen_state = None
        if seed is not None:
            gen_state = torch.random.get_rng_state()
            torch.manual_seed(seed)
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(_ACTIVATIONS[config.activation]())
                if config.dropout > 0:
                    layers.append(nn.Dropout(config.dropout))
        if gen_state is not None:
            torch.random.set_rng_state(gen_state)
        self.net = nn.Sequential(*layers)
        if config.init == "identity":
            self.reset_identity()

    @property
    def last(self) -> nn.Linear:
        return self.net[-1]

    def reset_identity(self) -> None:
        """Zero the last layer: gamma = 1 and beta = 0 exactly."""
        with torch.no_grad():
            self.last.weight.zero_()
            self.last.bias.zero_()

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if embedding.dim() == 1:
            embedding = embedding[None]
        if embedding.shape[-1] != self.config.embedding_dim:
            raise ValueError(f"FiLM adapter expects embeddings of size "
                             f"{self.config.embedding_dim}, got {embedding.shape[-1]}")
        if not torch.isfinite(embedding).all():
            raise ValueError("FiLM embedding contains NaN or infinite values")
        out = self.net(embedding.to(self.last.weight.dtype))
        j = self.config.joint_nf
        return 1.0 + out[:, :j], out[:, j:]

    @torch.no_grad()
    def stats(self, embedding: torch.Tensor) -> dict[str, float]:
        """Summary of gamma/beta for logging (``adapter/...`` metric names)."""
        gamma, beta = self(embedding)
        return {
            "adapter/gamma_mean": gamma.mean().item(),
            "adapter/gamma_std": gamma.std(unbiased=False).item(),
            "adapter/beta_mean": beta.mean().item(),
            "adapter/beta_std": beta.std(unbiased=False).item(),
            "adapter/gamma_drift": (gamma - 1).abs().mean().item(),
        }


def adapter_checkpoint(adapter: FiLMAdapter, extra: dict[str, Any] | None = None) -> dict:
    """The adapter-only checkpoint object (plain types and tensors only)."""
    cfg = dataclasses.asdict(adapter.config)
    cfg["hidden_dims"] = list(cfg["hidden_dims"])
    return {
        "format": ADAPTER_FORMAT,
        "version": ADAPTER_VERSION,
        "config": cfg,
        "state_dict": {k: v.detach().cpu().clone() for k, v in adapter.state_dict().items()},
        "extra": dict(extra or {}),
    }


def save_adapter(path: str | Path, adapter: FiLMAdapter,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write an adapter-only checkpoint atomically (``extra``: plain-type metadata)."""
    return torch_save(path, adapter_checkpoint(adapter, extra))


def load_adapter(path: str | Path) -> FiLMAdapter:
    """Read an adapter-only checkpoint written by :func:`save_adapter` (weights-only)."""
    from moltune.sbdd.checkpoint import check_layout, read_checkpoint_file

    obj = read_checkpoint_file(path)
    if not isinstance(obj, dict) or obj.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path} is not a moltune FiLM adapter checkpoint "
                              f"(expected format {ADAPTER_FORMAT!r})")
    try:
        config = FiLMConfig(**obj["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad FiLM adapter config: {exc}") from exc
    adapter = FiLMAdapter(config)
    expected = {k: v.shape for k, v in adapter.state_dict().items()}
    check_layout(expected, obj["state_dict"], where=str(path))
    adapter.load_state_dict(obj["state_dict"])
    return adapter


def as_embedding_tensor(embedding: np.ndarray | torch.Tensor | None,
                        n: int | None = None) -> torch.Tensor | None:
    """[E] or [B, E] array -> float tensor [B, E] (a single embedding repeated ``n`` times)."""
    if embedding is None:
        return None
    e = torch.as_tensor(np.asarray(embedding) if not torch.is_tensor(embedding) else embedding)
    e = e.float()
    if e.dim() == 1:
        e = e[None]
    if n is not None and e.shape[0] == 1 and n > 1:
        e = e.expand(n, -1)
    return e
