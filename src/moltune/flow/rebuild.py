"""A flow from a ``--flow`` spec: none, the identity control, a trained run or checkpoint, or a
run's weights rebuilt for another peptide (the transfer table)."""

from __future__ import annotations

import numpy as np
import torch

from moltune.common.errors import UserError

__all__ = ["load_sampler_flow", "run_flow_factory"]


def load_sampler_flow(spec: str | None) -> tuple[torch.nn.Module | None, dict | None]:
    """``None`` -> no flow; ``"identity"`` -> the identity control; else ``load_flow(spec)``."""
    if spec is None:
        return None, None
    if spec == "identity":
        from moltune.flow.models import IdentityFlow

        return IdentityFlow(), None
    from moltune.flow.checkpoint import load_flow

    return load_flow(spec)


def run_flow_factory(spec: str):
    """``flow_factory`` for ``moltune.flow.transfer.transfer_table`` from ``--flow``: ``identity`` or a run whose
    flow is rebuilt for the peptide at hand (same config, its weights) and its coordinate
    standardisation refitted on that peptide's frames (torsions at origin 0 when the run was
    trained so, ``moltune.flow.peptides.fit_representation``); weights shaped for another
    molecule (a per-atom layer of another size) raise an error naming them."""
    if spec == "identity":
        from moltune.flow.models import IdentityFlow

        return lambda topology, xyz: IdentityFlow()
    from moltune.flow.checkpoint import build_flow, read_flow_checkpoint

    ckpt, meta, cfg, weights = read_flow_checkpoint(spec)

    def factory(topology, xyz_by_temperature):
        flow = build_flow(cfg, topology)
        own = flow.state_dict()
        keep = {k: v for k, v in weights.items()
                if not k.startswith("representation.") and k in own}  # fmt: skip
        bad = [k for k, v in keep.items() if own[k].shape != v.shape]
        if bad:
            raise UserError(f"the flow in {ckpt} is not transferable to this molecule: weights "
                            f"{bad[:3]} have molecule-specific shapes")  # fmt: skip
        flow.load_state_dict(keep, strict=False)
        from moltune.flow.peptides import fit_representation

        fit_representation(flow.representation, np.concatenate(list(xyz_by_temperature)),
                           meta.get("torsion_origin", "fitted"))  # fmt: skip
        return flow.eval()

    return factory
