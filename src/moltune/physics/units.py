"""Boltzmann constant and thermal energy in moltune's units (kJ/mol, K).

``KB_KJMOL`` is the molar gas constant R = N_A k_B (CODATA 2018, exact), so that
``beta(T) * U`` is dimensionless for U in kJ/mol.
"""

from __future__ import annotations

import numpy as np

KB_KJMOL: float = 0.00831446261815324
"""Boltzmann constant in kJ/(mol K)."""


def kT(T_K):
    """Thermal energy k_B T in kJ/mol for a temperature in K (float, numpy array or tensor)."""
    return _check_positive(T_K) * KB_KJMOL


def beta(T_K):
    """Inverse thermal energy 1/(k_B T) in mol/kJ for a temperature in K."""
    return 1.0 / kT(T_K)


def _check_positive(T_K):
    values = T_K.detach().cpu().numpy() if hasattr(T_K, "detach") else np.asarray(T_K)
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        from moltune.common.errors import InvalidInputError

        raise InvalidInputError(f"temperature must be finite and > 0 K, got {T_K!r}")
    return T_K
