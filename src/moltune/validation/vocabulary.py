"""The documented vocabulary of diagnosis findings and severities (ids are a stable interface).

``diagnosis.json`` holds a list of findings, most severe first; each has an ``id`` from
``FINDINGS``, a ``severity`` from ``SEVERITIES`` and its evidence as numbers. Within one severity,
findings are ordered by their position in ``FINDINGS`` (root causes before symptoms). ``healthy``
is a verdict rather than a problem: when present it comes first and nothing of severity medium
or worse was found.
"""

from __future__ import annotations

SEVERITIES: tuple[str, ...] = ("critical", "high", "medium", "low", "info")
"""Most severe first. critical: the model is broken; high: results cannot be trusted as they are;
medium: worth fixing; low / info: notes."""

FINDINGS: dict[str, str] = {
    "inverse_explosion": (
        "The inverse direction (T^-1 applied to target samples) produces energies far above the "
        "source reference (or non-finite), often while the reconstruction T^-1(T(x)) looks perfect."
    ),
    "forward_explosion": (
        "The forward direction (T applied to source samples) produces energies far above the "
        "target reference (or non-finite)."
    ),
    "nonfinite": "A loss, energy or gradient became NaN or infinite.",
    "quality_collapse": (
        "A quality metric (connectivity, validity, acceptance, ...) fell below its floor or lost "
        "most of its best value, typically while the loss kept improving."
    ),
    "quality_decline": (
        "A quality metric ended clearly below its best value without collapsing: the run went "
        "past its best point (often overfitting that the loss curves do not show yet)."
    ),
    "not_learning": "The training loss did not improve measurably over the run.",
    "adapter_drift": "The mean FiLM gamma left its sane range (default [0.1, 10]).",
    "stopped_by_monitor": "A red-flag monitor stopped the run (stopped.json).",
    "small_validation": (
        "The validation set is too small to trust (few samples), or validation loss is volatile "
        "far beyond the training loss's noise."
    ),
    "overfitting": (
        "Validation loss rose from its best while training loss kept falling, or the val/train "
        "loss ratio passed its bound."
    ),
    "direction_asymmetry": (
        "Over the last evaluations one direction's loss improved while the other's got worse."
    ),
    "gradient_explosion": "The gradient L2 norm exceeded its bound.",
    "monitor_warnings": "Red-flag monitors raised warnings during training (redflags.json).",
    "no_validation": "No validation loss was logged, so generalisation cannot be judged.",
    "short_run": "Too few evaluations to judge trends (so the run is not called healthy).",
    "healthy": "No finding of severity medium or worse: the run looks healthy on what was logged.",
}

SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
FINDING_RANK = {f: i for i, f in enumerate(FINDINGS)}


def sort_key(finding_id: str, severity: str) -> tuple[int, int]:
    """Sort key: healthy first, then by severity, then by vocabulary order."""
    if finding_id == "healthy":
        return (-1, -1)
    return (SEVERITY_RANK[severity], FINDING_RANK.get(finding_id, len(FINDINGS)))
