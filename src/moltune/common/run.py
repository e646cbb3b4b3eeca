"""Run folders: one folder per run holding its resolved config, metrics, checkpoints and report.

Layout (every writer in moltune follows it, and ``moltune runs diagnose`` reads it)::

    RUN/
      config.yaml        resolved config (defaults <- preset <- flags)
      metrics.csv        one row per logged step (Lightning CSVLogger format)
      checkpoints/       last.ckpt and top-k, written atomically
      plots/             PNG figures
      report.md          what a person reads first
      stopped.json       only if a red-flag monitor stopped the run
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from moltune.common.config import to_yaml
from moltune.common.io import write_text

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
PLOTS_DIR = "plots"
REPORT_FILE = "report.md"
STOPPED_FILE = "stopped.json"


@dataclass
class RunDir:
    """A run folder (created on construction)."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoints(self) -> Path:
        d = self.path / CHECKPOINT_DIR
        d.mkdir(exist_ok=True)
        return d

    @property
    def plots(self) -> Path:
        d = self.path / PLOTS_DIR
        d.mkdir(exist_ok=True)
        return d

    @property
    def report(self) -> Path:
        return self.path / REPORT_FILE

    def write_config(self, cfg: Any) -> Path:
        return write_text(self.config, to_yaml(cfg))


PACKAGES = ("moltune", "numpy", "torch", "lightning", "openmm", "mdtraj", "rdkit", "scipy")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages a result depends on (for metadata / provenance)."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
