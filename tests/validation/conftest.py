"""Shared runs for the validation tests: each real Lightning run is trained once per session."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import validation_toys as vt

from moltune.validation.monitors import GuardedModelCheckpoint, default_monitors

torch.set_num_threads(1)
logging.getLogger("lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def monitored(run: Path, config=None, checkpoint: bool = True):
    cbs = default_monitors(config, run)
    if checkpoint:
        cbs.append(GuardedModelCheckpoint(dirpath=run / "checkpoints", save_last=True, save_top_k=-1,
                                          filename="{epoch}-{step}"))
    return cbs


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Lazily built real runs, keyed by name."""
    root = tmp_path_factory.mktemp("runs")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name in cache:
            return cache[name]
        run = root / name
        if name == "explode":
            vt.fit(vt.TwoDirectionToy(), run, 30, monitored(run))
        elif name == "explode_unguarded":
            from lightning.pytorch.callbacks import ModelCheckpoint

            cbs = default_monitors(None, run) + [ModelCheckpoint(
                dirpath=run / "checkpoints", save_last=True, save_top_k=-1)]
            vt.fit(vt.TwoDirectionToy(), run, 30, cbs)
        elif name == "lr0":
            vt.fit(vt.Regression(lr=0.0), run, 8, monitored(run, checkpoint=False))
        elif name == "healthy":
            vt.fit(vt.Regression(), run, 12, monitored(run, checkpoint=False))
        elif name == "overfit":
            vt.fit(vt.Regression(n_train=8, n_val=200, hidden=64, lr=3e-2, noise=0.5, batch_size=8,
                                 optimizer="adam", linear_target=False, repeat=5),
                   run, 20, monitored(run, checkpoint=False), tensorboard=True)
        elif name == "transport":
            val, train = vt.transport_history()
            vt.fit(vt.ReplayModule(val, train), run, len(val["val/loss"]))
            from moltune.common.io import write_json

            write_json(run / "evaluation" / "metrics.json",
                       {"inverse": {"energy_mean_kjmol": 9.0e17}, "reconstruction_rmsd_nm": 1e-5})
        elif name in ("ligand_collapse", "ligand_one_sample", "ligand_full"):
            val, train, hp = vt.ligand_history(collapse=name != "ligand_one_sample",
                                               one_sample=name != "ligand_collapse")
            vt.fit(vt.ReplayModule(val, train, hparams=hp), run, 10)
        else:
            raise KeyError(name)
        cache[name] = run
        return run

    return get


@pytest.fixture(scope="session")
def pathology(tmp_path_factory):
    """Lazily trained genuine runs of ``pathology_runs.CASES``, keyed by name."""
    import pathology_runs as pr

    root = tmp_path_factory.mktemp("pathology")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = pr.train(name, root)
        return cache[name]

    return get
