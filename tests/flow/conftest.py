"""Shared fixtures for the flow tests: a real AA zwitterion (built with the project's builder)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def aa_peptide():
    from moltune.physics.peptide import build_peptide

    return build_peptide("AA")


@pytest.fixture(scope="session")
def aa_samples(aa_peptide):
    """Perturbed copies of the minimised AA structure [64, 23, 3] float64 nm (thermal-sized noise)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.as_tensor(aa_peptide.positions_nm, dtype=torch.float64)
    return x0[None] + 0.005 * torch.randn(64, *x0.shape, generator=g, dtype=torch.float64)


def _perturb(module: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> torch.nn.Module:
    """Give every parameter a random value so tests do not pass merely because a map is the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det| of the full 3N x 3N Cartesian Jacobian of ``fn`` at each configuration (autograd)."""
    out = []
    for xi in x:
        J = torch.autograd.functional.jacobian(
            lambda v, xi=xi: fn(v.view(1, *xi.shape))[0].reshape(-1),
            xi.reshape(-1),
            vectorize=True,
        )
        out.append(torch.linalg.slogdet(J)[1])
    return torch.stack(out)


@pytest.fixture
def perturb():
    return _perturb


@pytest.fixture
def jacobian_logdet():
    return _jacobian_logdet
