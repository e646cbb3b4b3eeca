"""A short real training run: replica-exchange data from OpenMM, Lightning, checkpoints, CLI."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from moltune.common.config import load_config
from moltune.flow.checkpoint import load_flow
from moltune.flow.losses import transport_terms
from moltune.flow.models import IdentityFlow
from moltune.flow.train import DataConfig, FlowConfig, TrainConfig, train


@pytest.fixture(scope="module")
def pt_dir(tmp_path_factory):
    """A tiny 300/450 K parallel-tempering run of AA (200 frames per temperature)."""
    from moltune.physics.replica_exchange import PTConfig, simulate

    out = tmp_path_factory.mktemp("pt") / "aa"
    cfg = PTConfig(
        temperatures_K=[300.0, 450.0], time_ns=0.02, save_interval_ps=0.1, swap_interval_ps=0.1,
        equilibration_ps=2.0, checkpoint_interval_ps=10.0, seed=3,
    )  # fmt: skip
    simulate("AA", out, cfg, progress=False)
    return out


def _cfg(pt_dir, **kw) -> TrainConfig:
    base = TrainConfig(
        flow=FlowConfig(name="baseline_ic"),
        data=DataConfig(train_dir=str(pt_dir), test_dir=None, val_pairs=32, val_fraction=0.2),
        batch_size=32, lr=2e-2, warmup_steps=2, steps=24, max_minutes=None, val_every_steps=12,
        top_k=1,
    )  # fmt: skip
    return dataclasses.replace(base, **kw)


def test_short_training_run_beats_identity(pt_dir, tmp_path):
    from moltune.physics.energy import TorchEnergy
    from moltune.physics.ptdata import load_pt_data

    run = train(_cfg(pt_dir), tmp_path / "run")
    df = pd.read_csv(run / "metrics.csv")
    losses = df[["train/loss_forward", "train/loss_inverse"]].dropna()
    assert len(losses) == 24 and np.isfinite(losses.to_numpy()).all()
    assert df["train/skipped_steps"].dropna().iloc[-1] == 0
    assert (run / "checkpoints" / "last.ckpt").exists() and (run / "config.yaml").exists()
    assert (run / "plots" / "losses.png").exists()
    summary = pd.read_json(run / "train_summary.json", typ="series")
    step0 = summary["step0"]  # the map starts as the identity: step-0 loss = b_t <U(x)>_s
    assert abs(step0["loss_forward"] - step0["identity_loss_forward"]) < 1e-6 * abs(
        step0["identity_loss_forward"]
    )
    assert abs(step0["loss_inverse"] - step0["identity_loss_inverse"]) < 1e-6 * abs(
        step0["identity_loss_inverse"]
    )
    val = df["val/acceptance_flow"].dropna()
    assert len(val) >= 2 and val.between(0, 1).all()
    assert df["val/nonfinite_fraction"].dropna().max() == 0

    # the trained flow (reloaded weights-only) has lower losses than the identity on fixed frames
    flow, info = load_flow(run)
    assert info["flow"] == "baseline_ic" and info["temperatures_K"] == [300.0, 450.0]
    data = load_pt_data(pt_dir)
    energy = TorchEnergy.from_topology(data.topology).double()
    x = torch.as_tensor(data.xyz_nm[0][::2]).double()
    y = torch.as_tensor(data.xyz_nm[1][::2]).double()
    u_s, u_t = float(data.energy_kjmol[0].mean()), float(data.energy_kjmol[1].mean())
    with torch.no_grad():
        ident = transport_terms(IdentityFlow(), energy, x, y, 300.0, 450.0, u_s, u_t)
        trained = transport_terms(flow, energy, x, y, 300.0, 450.0, u_s, u_t)
    total = lambda t: float(t.loss_forward.mean() + t.loss_inverse.mean())
    assert np.isfinite(total(trained))
    assert total(trained) < total(ident) - 0.5  # at least half a kT better in total

    # a checkpoint with flow settings this version does not know: a clear CheckpointError
    from moltune.common.errors import CheckpointError

    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    state["hyper_parameters"]["moltune"]["flow_config"]["warp_drive"] = True
    torch.save(state, tmp_path / "future.ckpt")
    with pytest.raises(CheckpointError, match="warp_drive"):
        load_flow(tmp_path / "future.ckpt")

    # resume continues from last.ckpt
    cfg2 = _cfg(pt_dir, steps=30)
    train(cfg2, run, resume=True)
    df2 = pd.read_csv(run / "metrics.csv")
    assert df2["step"].max() >= 29


def test_refuses_to_overwrite_a_run(pt_dir, tmp_path):
    from moltune.common.errors import InvalidInputError

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="already holds a run"):
        train(_cfg(pt_dir), tmp_path / "run")


def test_presets_resolve():
    for name in ("aa_300_450", "aa_300_450_gpu", "aa_ladder"):
        cfg = load_config(TrainConfig, name)
        assert cfg.flow.name == "tarflow"
    ladder = load_config(TrainConfig, "aa_ladder")
    assert ladder.data.pairs == [[0, 1], [1, 2], [2, 3]]


def test_cli_flags_and_alias(pt_dir, tmp_path):
    from moltune.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(
        ["pt", "train", "--preset", "aa_300_450", "--steps", "5", "--flow", "baseline_ic",
         "--representation", "cartesian", "--out", str(tmp_path / "r")]
    )  # fmt: skip
    assert args.steps == 5 and args.flow == "baseline_ic" and args.representation == "cartesian"
    args = parser.parse_args(
        ["train-molecular", "--data-dir", str(pt_dir), "--epochs", "2", "--learning-rate",
         "0.01", "--output-dir", str(tmp_path / "r2"), "--source-temp", "300",
         "--target-temp", "450"]
    )  # fmt: skip
    assert args.data == str(pt_dir) and args.lr == 0.01 and args.out == str(tmp_path / "r2")
    with pytest.raises(SystemExit):
        parser.parse_args(["pt", "train", "--steps", "5", "--epochs", "2", "--out", "x"])
