"""``LigandDiffusionModel``: a DiffSBDD conditional full-atom model plus an optional FiLM adapter.

Built from a DiffSBDD checkpoint's ``hyper_parameters`` (the sizes come from the checkpoint, not
from DiffSBDD's config files, which disagree with the released weights). ``self.ddpm`` holds the
DiffSBDD part with DiffSBDD's state-dict names; ``self.film`` the adapter (kept out of the
DiffSBDD layout, saved on its own with :func:`moltune.sbdd.film.save_adapter`).

API used by training (issue 7)::

    model = LigandDiffusionModel.from_checkpoint(ckpt, film=FiLMConfig(hidden_dims=(128,)))
    model.freeze_base()                       # only adapter parameters train
    out = model(batch, embeddings=emb)        # LossTerms; out.loss is the batch mean
    model.save_adapter(path); model.load_adapter(path)
    x, types, mask = model.sample(pocket_x, pocket_one_hot, pocket_mask, n_atoms, embeddings=emb)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from moltune.common.errors import CheckpointError
from moltune.sbdd import checkpoint as ckpt_io
from moltune.sbdd.diffusion import ConditionalDiffusion, LossTerms, NoiseFn
from moltune.sbdd.dynamics import DynamicsConfig, EGNNDynamics
from moltune.sbdd.film import (
    FiLMAdapter,
    FiLMConfig,
    as_embedding_tensor,
    load_adapter,
    save_adapter,
)
from moltune.sbdd.vocab import N_ELEMENTS

Tensor = torch.Tensor

SUPPORTED = {
    "mode": ("pocket_conditioning",),
    "pocket_representation": ("full-atom",),
    "dataset": ("crossdock", "crossdock_full"),
}


def dynamics_config_from_hparams(hp: Mapping[str, Any]) -> DynamicsConfig:
    """Network sizes from DiffSBDD hyper-parameters; unsupported variants are CheckpointErrors."""
    for key, allowed in SUPPORTED.items():
        if key in hp and hp[key] not in allowed:
            raise CheckpointError(f"unsupported DiffSBDD checkpoint: {key}={hp[key]!r} "
                                  f"(supported: {', '.join(allowed)})")
    if hp.get("virtual_nodes"):
        raise CheckpointError("unsupported DiffSBDD checkpoint: virtual_nodes=True")
    e = hp["egnn_params"]
    try:
        return DynamicsConfig(
            atom_nf=N_ELEMENTS, residue_nf=N_ELEMENTS,
            joint_nf=int(e["joint_nf"]), hidden_nf=int(e["hidden_nf"]),
            n_layers=int(e["n_layers"]), inv_sublayers=int(e.get("inv_sublayers", 1)),
            attention=bool(e.get("attention", True)), tanh=bool(e.get("tanh", True)),
            norm_constant=float(e.get("norm_constant", 1)),
            normalization_factor=float(e.get("normalization_factor", 100)),
            aggregation_method=str(e.get("aggregation_method", "sum")),
            edge_cutoff_ligand=e.get("edge_cutoff_ligand"),
            edge_cutoff_pocket=e.get("edge_cutoff_pocket"),
            edge_cutoff_interaction=e.get("edge_cutoff_interaction"),
            reflection_equivariant=bool(e.get("reflection_equivariant", True)),
        )
    except KeyError as exc:
        raise CheckpointError(f"egnn_params lacks {exc}") from exc


class LigandDiffusionModel(nn.Module):
    """DiffSBDD conditional full-atom diffusion (``ddpm``) + optional FiLM adapter (``film``)."""

    def __init__(self, hyper_parameters: Mapping[str, Any], film: FiLMConfig | FiLMAdapter | None = None,
                 gamma_table: Tensor | None = None):
        super().__init__()
        hp = ckpt_io._plain(dict(hyper_parameters))
        self.hyper_parameters = hp
        dcfg = dynamics_config_from_hparams(hp)
        d = hp["diffusion_params"]
        if d.get("diffusion_loss_type", "l2") != "l2":
            raise CheckpointError(f"unsupported diffusion_loss_type {d['diffusion_loss_type']!r}")
        T = int(d["diffusion_steps"])
        if gamma_table is None:
            from moltune.sbdd.diffusion import polynomial_gamma_table

            sched = str(d.get("diffusion_noise_schedule", "polynomial_2"))
            if not sched.startswith("polynomial_"):
                raise CheckpointError(f"unsupported noise schedule {sched!r}")
            gamma_table = torch.from_numpy(polynomial_gamma_table(
                T, float(sched.split("_")[1]), float(d["diffusion_noise_precision"]))).float()
        hist = hp.get("node_histogram")
        hist_t = torch.tensor(np.asarray(hist, dtype=np.float64)) if hist is not None else None
        self.ddpm = ConditionalDiffusion(
            EGNNDynamics(dcfg), gamma_table, atom_nf=dcfg.atom_nf, size_histogram=hist_t,
            norm_values=tuple(d.get("normalize_factors", (1, 4))),
        )
        self.film: FiLMAdapter | None = None
        if film is not None:
            self.set_film(film)

    # ------------------------------------------------------------ construction / IO
    @classmethod
    def from_checkpoint(cls, path_or_ckpt: str | Path | ckpt_io.DiffSBDDCheckpoint,
                        film: FiLMConfig | FiLMAdapter | None = None,
                        trust: bool = False) -> LigandDiffusionModel:
        """Load a DiffSBDD checkpoint (weights-only), check its layout, tie weights, eval mode."""
        ck = (path_or_ckpt if isinstance(path_or_ckpt, ckpt_io.DiffSBDDCheckpoint)
              else ckpt_io.load_checkpoint(path_or_ckpt, trust=trust))
        where = str(ck.path) if ck.path else "checkpoint"
        try:
            model = cls(ck.hyper_parameters, film=film,
                        gamma_table=ck.state_dict.get("ddpm.gamma.gamma"))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CheckpointError):
                raise CheckpointError(f"{where}: {exc}") from exc
            raise CheckpointError(f"{where}: hyper-parameters unusable: {exc!r}") from exc
        model.load_diffsbdd_state_dict(ck.state_dict, where=where)
        return model.eval()

    def expected_layout(self) -> dict[str, torch.Size]:
        return {k: v.shape for k, v in self.diffsbdd_state_dict().items()}

    def tied_pairs(self) -> list[tuple[str, str]]:
        return self.ddpm.dynamics.tied_parameter_names(prefix=ckpt_io.STATE_PREFIX + "dynamics.")

    def load_diffsbdd_state_dict(self, state_dict: Mapping[str, Tensor],
                                 where: str = "checkpoint") -> None:
        """Load a ``ddpm.``-prefixed state dict (strict, checked, tied tensors verified)."""
        ckpt_io.check_layout(self.expected_layout(), state_dict, where=where)
        ckpt_io.check_tied(state_dict, self.tied_pairs(), where=where)
        sub = {k[len(ckpt_io.STATE_PREFIX):]: v for k, v in state_dict.items()}
        self.ddpm.load_state_dict(sub, strict=True)

    def diffsbdd_state_dict(self) -> dict[str, Tensor]:
        """The DiffSBDD part with DiffSBDD's names (tied tensors under both names)."""
        return {ckpt_io.STATE_PREFIX + k: v for k, v in self.ddpm.state_dict().items()}

    def save_diffsbdd_checkpoint(self, path: str | Path) -> Path:
        """Write a checkpoint in the DiffSBDD layout (loadable here and by DiffSBDD's code)."""
        return ckpt_io.save_checkpoint(path, self.diffsbdd_state_dict(), self.hyper_parameters)

    # ------------------------------------------------------------ FiLM
    @property
    def joint_nf(self) -> int:
        return self.ddpm.dynamics.cfg.joint_nf

    def set_film(self, film: FiLMConfig | FiLMAdapter | None) -> None:
        """Attach (or remove, with None) a FiLM adapter; its joint_nf must match the model."""
        if isinstance(film, FiLMConfig):
            film = FiLMAdapter(film)
        if film is not None and film.config.joint_nf != self.joint_nf:
            raise ValueError(f"FiLM adapter outputs joint_nf={film.config.joint_nf}, the model "
                             f"has joint_nf={self.joint_nf}")
        if film is not None:
            p = next(self.ddpm.dynamics.parameters())
            film = film.to(device=p.device, dtype=p.dtype)
        self.film = film

    def save_adapter(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        if self.film is None:
            raise ValueError("model has no FiLM adapter to save")
        return save_adapter(path, self.film, extra)

    def load_adapter(self, path: str | Path) -> FiLMAdapter:
        adapter = load_adapter(path)
        self.set_film(adapter)
        return adapter

    def freeze_base(self, freeze: bool = True) -> None:
        """Freeze every DiffSBDD parameter (``freeze=True``); adapter parameters stay trainable."""
        for p in self.ddpm.parameters():
            p.requires_grad_(not freeze)
        if self.film is not None:
            for p in self.film.parameters():
                p.requires_grad_(True)

    def film_params(self, embeddings: Tensor | np.ndarray | None,
                    n_samples: int) -> tuple[Tensor, Tensor] | None:
        """(gamma, beta) [B, joint_nf] for per-sample embeddings [B, E] (or one [E] for all)."""
        if embeddings is None:
            return None
        if self.film is None:
            raise ValueError("embeddings given but the model has no FiLM adapter")
        p = self.film.last.weight
        e = as_embedding_tensor(embeddings, n_samples).to(device=p.device, dtype=p.dtype)
        if e.shape[0] != n_samples:
            raise ValueError(f"got {e.shape[0]} embeddings for {n_samples} samples")
        return self.film(e)

    # ------------------------------------------------------------ computation
    def denoise(self, z_lig: Tensor, xh_pocket: Tensor, t: Tensor, lig_mask: Tensor,
                pocket_mask: Tensor, embeddings: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One network call (normalised inputs) -> (eps_hat_lig, pocket output)."""
        n = int(torch.cat([lig_mask, pocket_mask]).max().item()) + 1
        return self.ddpm.dynamics(z_lig, xh_pocket, t, lig_mask, pocket_mask,
                                  film=self.film_params(embeddings, n))

    def forward(self, batch: Mapping[str, Tensor], embeddings: Tensor | None = None,
                t_int: Tensor | None = None, noise: NoiseFn | None = None) -> LossTerms:
        """Loss for a batch in the DiffSBDD data layout (l2 in train mode, VLB in eval mode).

        ``batch`` keys: ``lig_coords`` [N,3] Å, ``lig_one_hot`` [N,10] (0/1), ``lig_mask``,
        ``num_lig_atoms``, ``pocket_coords``, ``pocket_one_hot``, ``pocket_mask``,
        ``num_pocket_nodes``. ``embeddings`` [B, E] per-sample pocket embeddings for FiLM.
        """
        ligand, pocket = self.ligand_pocket(batch)
        film = self.film_params(embeddings, len(ligand["size"]))
        return self.ddpm.loss(ligand, pocket, t_int=t_int, noise=noise, film=film)

    def ligand_pocket(self, batch: Mapping[str, Tensor]) -> tuple[dict, dict]:
        """The (ligand, pocket) dicts ``ddpm.loss`` takes, from a batch in the DiffSBDD layout,
        on the model's device and dtype."""
        p = next(self.ddpm.dynamics.parameters())

        def part(x, one_hot, mask, size):
            return {
                "x": batch[x].to(device=p.device, dtype=p.dtype),
                "one_hot": batch[one_hot].to(device=p.device, dtype=p.dtype),
                "mask": batch[mask].to(p.device).long(),
                "size": batch[size].to(p.device).long(),
            }

        return (part("lig_coords", "lig_one_hot", "lig_mask", "num_lig_atoms"),
                part("pocket_coords", "pocket_one_hot", "pocket_mask", "num_pocket_nodes"))

    @torch.no_grad()
    def sample(self, pocket_x: Tensor, pocket_one_hot: Tensor, pocket_mask: Tensor,
               num_nodes_lig: Tensor, timesteps: int | None = None,
               embeddings: Tensor | np.ndarray | None = None, noise: NoiseFn | None = None,
               callback=None) -> tuple[Tensor, Tensor, Tensor]:
        """Generate ligands for batched pockets (Å, any frame) -> (x Å, type index, lig_mask)."""
        p = next(self.ddpm.dynamics.parameters())
        film = self.film_params(embeddings, len(num_nodes_lig))
        return self.ddpm.sample_given_pocket(
            pocket_x.to(device=p.device, dtype=p.dtype), pocket_one_hot.to(p.device),
            pocket_mask.to(p.device).long(), torch.as_tensor(num_nodes_lig).to(p.device),
            timesteps=timesteps, noise=noise, film=film, callback=callback,
        )

    def sample_num_atoms(self, pocket_size: int, n: int,
                         generator: torch.Generator | None = None) -> Tensor:
        """Ligand sizes ~ p(N_lig | N_pocket) from the checkpoint's node histogram."""
        hist = self.ddpm.size_histogram
        if hist is None:
            raise ValueError("the checkpoint has no node_histogram; give the number of atoms")
        if not 0 <= pocket_size < hist.shape[1]:
            from moltune.common.errors import InvalidInputError

            raise InvalidInputError(
                f"pocket has {pocket_size} atoms; the checkpoint's size histogram covers 0.."
                f"{hist.shape[1] - 1}; give the number of ligand atoms explicitly")
        col = (hist[:, pocket_size] + 1e-3).cpu()
        col = col / col.sum()
        return torch.multinomial(col, n, replacement=True, generator=generator)
