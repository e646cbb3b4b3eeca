"""Training on several peptides (issue 4, transfer) through the one training path: a shared
TarFlow core over peptides of different sizes, checkpoints that ``load_flow`` / ``pt transfer``
read, fine-tuning and an exact resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from moltune.common.errors import InvalidInputError
from moltune.flow.peptides import PeptideTransportModule, TrainBatches, TransportDataModule
from moltune.flow.train import (
    DataConfig,
    FlowConfig,
    TrainConfig,
    build_flows,
    load_peptides,
    train,
)
from moltune.physics.replica_exchange import PTConfig, simulate

# three PT simulations and several trainings: minutes on a 2-core CPU
pytestmark = pytest.mark.slow

TINY = {"temperatures_K": [300.0, 450.0, 670.0], "time_ns": 0.01, "save_interval_ps": 0.2,
        "swap_interval_ps": 0.1, "equilibration_ps": 1.0, "checkpoint_interval_ps": 11.0,
        "seed": 5}  # fmt: skip
FLOW = FlowConfig(n_blocks=2, d_model=16, n_heads=2, per_coordinate=False)


@pytest.fixture(scope="module")
def pt_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    return {name: str(simulate(name, root / name, PTConfig(**TINY), progress=False)["out"])
            for name in ("AA", "AS", "SA")}  # fmt: skip


def _cfg(pt_dirs, names, **kw):
    base = {"flow": FLOW, "batch_size": 16, "steps": 12, "val_every_steps": 6,
            "data": DataConfig(peptides={n: {"train_dir": pt_dirs[n]} for n in names},
                               val_pairs=20),
            "warmup_steps": 2, "lr": 3e-3, "max_minutes": None, "torsion_origin": "zero",
            "top_k": 1}  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _train(cfg, out, **kw) -> dict:
    import json

    run = train(cfg, out, progress=False, **kw)
    return json.loads((run / "train_summary.json").read_text())


def test_peptides_share_one_core_and_start_as_the_naive_swap(pt_dirs):
    cfg = _cfg(pt_dirs, ["AA", "AS"])
    sets = load_peptides(cfg)
    core = build_flows(cfg, sets).core
    assert [s.flow.representation.n_tokens for s in sets] == [23, 24]  # AA, AS atoms
    assert sets[0].flow.core is sets[1].flow.core is core
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False)  # fmt: skip
    dm = TransportDataModule(sets, 16, 20, 0)
    trainer.validate(PeptideTransportModule(sets), datamodule=dm, verbose=False)
    v = {k: float(x) for k, x in trainer.callback_metrics.items()}
    assert {k for k in v if k.startswith("val/acceptance_flow_")} == {
        f"val/acceptance_flow_{n}_{p}" for n in ("AA", "AS") for p in ("300_450", "450_670")}
    # the untrained core is the identity: flow acceptance = naive acceptance, pair by pair
    for key, acc in v.items():
        if key.startswith("val/acceptance_flow_"):
            assert acc == pytest.approx(v[key.replace("flow", "naive")], abs=1e-4)  # TorchEnergy
            # vs the OpenMM energies stored with the frames: ~1e-4 kJ/mol apart
    assert 0.0 < v["val/acceptance_naive"] < 1.0
    assert v["val/reconstruction_rmsd_nm"] < 1e-6  # every pair's round trip, none NaN
    # round robin: batch g is peptide g mod 2, its pairs mixed, a function of (seed, g) alone
    batches = TrainBatches(sets, 16, seed=3)
    x0, _, ts0, _, key0 = batches[0]
    x1, _, _, _, key1 = batches[5]
    assert (key0, key1) == (0, 1) and x0.shape == (16, 23, 3) and x1.shape == (16, 24, 3)
    assert set(ts0.tolist()) == {300.0, 450.0} and ts0.dtype == torch.float64
    late = [batches[g][0] for g in range(0, 40, 2)]  # AA's batches, through several passes
    torch.testing.assert_close(late[-1], TrainBatches(sets, 16, 3)[38][0])  # a resumed run
    # one pass: every AA source frame of both pairs once (2 x 45 frames, 5 whole batches)
    n = batches.pass_length(0)
    assert n == 90 // 16
    one_pass = torch.cat(late[:n]).flatten(1)
    assert len(torch.unique(one_pass, dim=0)) == n * 16


def test_two_peptides_learn_and_write_a_transferable_checkpoint(pt_dirs, tmp_path):
    from moltune.flow.checkpoint import load_flow
    from moltune.flow.pt_sampler import run_flow_factory, transfer_table

    s = _train(_cfg(pt_dirs, ["AA", "AS"]), tmp_path / "run")
    assert s["steps"] == 12 and s["skipped_steps"] == 0
    assert s["best_val_acceptance_flow"] > s["start"]["val/acceptance_flow"] + 0.02
    assert (tmp_path / "run" / "plots" / "acceptance.png").stat().st_size > 0
    import pandas as pd

    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert m.dropna(subset=["val/acceptance_flow"])["step"].tolist() == [0, 6, 12]
    # round robin over the peptides (AA, AS, AA, ...), every loss finite
    t = m.dropna(subset=["train/loss"])
    assert t["step"].tolist() == list(range(1, 13)) and np.isfinite(t["train/loss"]).all()
    assert t["train/peptide"].tolist() == [0, 1] * 6
    # load_flow rebuilds the first peptide's flow from the best checkpoint
    flow, info = load_flow(tmp_path / "run")
    assert info["path"].endswith("best.ckpt") and info["pairs"] == [[0, 1], [1, 2]]
    assert info["peptides"] == ["AA", "AS"] and info["torsion_origin"] == "zero"
    state = torch.load(info["path"], weights_only=True)
    assert info["score"] == pytest.approx(s["best_val_acceptance_flow"], abs=1e-6)
    assert {k.split(".")[0] for k in state["state_dict"]} <= {"flow", "skipped_steps"}
    assert set(state["peptide_representations"]) == {"AA", "AS"}
    for k, v in flow.core.state_dict().items():
        torch.testing.assert_close(v, state["state_dict"][f"flow.core.{k}"])
    # zero-shot on an unseen peptide through `pt transfer`'s factory: a real, finite table
    rows = transfer_table(run_flow_factory(str(tmp_path / "run")), {"SA": pt_dirs["SA"]},
                          pairs=[(0, 1)], n_pairs=40, n_boot=10)  # fmt: skip
    assert rows[0]["peptide"] == "SA" and rows[0]["nonfinite_fraction"] == 0.0
    assert 0.0 <= rows[0]["acceptance_flow"]["mean"] <= 1.0
    assert rows[0]["acceptance_flow"]["mean"] != pytest.approx(rows[0]["acceptance_naive"]["mean"])

    # fine-tuning starts from the trained core (its step-0 acceptance is the trained one)
    ft = _train(_cfg(pt_dirs, ["AA", "AS"], init=str(tmp_path / "run"), steps=0),
                tmp_path / "ft")
    m = m.dropna(subset=["val/acceptance_flow"])
    at_best = m.loc[m["val/acceptance_flow"].idxmax()]
    for pair in ("300_450", "450_670"):  # the same held-out AA frames, the same weights
        key = f"val/acceptance_flow_AA_{pair}"
        assert ft["start"][key] == pytest.approx(at_best[key], abs=1e-9)
    best = torch.load(tmp_path / "ft" / "checkpoints" / "best.ckpt", weights_only=True)
    for k, v in state["state_dict"].items():
        if k.startswith("flow.core."):
            torch.testing.assert_close(best["state_dict"][k], v)


def test_per_coordinate_layer_is_refused_with_several_peptides(pt_dirs, tmp_path):
    cfg = _cfg(pt_dirs, ["AA", "AS"],
               flow=FlowConfig(n_blocks=1, d_model=16, per_coordinate=True))  # fmt: skip
    with pytest.raises(InvalidInputError, match="per_coordinate"):
        _train(cfg, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_train_transfer_cli_replaces_the_preset_peptides(pt_dirs, tmp_path):
    import json

    from moltune.cli.main import main

    preset = tmp_path / "tiny.yml"  # the shipped preset, shrunk to the 3-temperature test data
    text = (Path(__file__).resolve().parents[2] / "src/moltune/presets/transfer_aa_ak_as.yml")
    text = text.read_text().replace("pairs: [[0, 1], [1, 2], [2, 3]]", "pairs: [[0, 1], [1, 2]]")
    preset.write_text(text.replace("batch_size: 128", "batch_size: 16")
                      .replace("val_pairs: 200", "val_pairs: 10"))  # fmt: skip
    rc = main(["pt", "train-transfer", "--preset", str(preset),
               "--peptide", f"AS={pt_dirs['AS']}", "--steps", "2", "--val-every-steps", "1",
               "--warmup-steps", "1", "--no-progress", "--out", str(tmp_path / "cli")])  # fmt: skip
    assert rc == 0
    s = json.loads((tmp_path / "cli" / "train_summary.json").read_text())
    assert s["peptides"] == ["AS"] and s["steps"] == 2
    # one peptide: the metric names of a one-peptide run
    assert set(s["last"]) >= {"val/acceptance_flow_300_450", "val/acceptance_naive_450_670"}


def test_zero_torsion_origin_makes_the_standardisation_frame_independent(pt_dirs):
    from moltune.flow.coordinates import AFFINE, CIRCULAR, make_representation
    from moltune.flow.peptides import fit_representation
    from moltune.physics.ptdata import load_pt_data

    d = load_pt_data(pt_dirs["AA"])
    hot, cold = np.asarray(d.xyz_nm[2]), np.asarray(d.xyz_nm[0])  # 670 K vs 300 K frames
    fitted = [fit_representation(make_representation("internal", d.topology), x, "fitted")
              for x in (hot, cold)]  # fmt: skip
    zero = [fit_representation(make_representation("internal", d.topology), x, "zero")
            for x in (hot, cold)]  # fmt: skip
    circ = fitted[0].slot_kind == CIRCULAR
    aff = fitted[0].slot_kind == AFFINE
    assert circ.sum() >= 4
    # fitted circular means depend on the frames (rotors); the zero origin does not
    assert (fitted[0].mean[circ] - fitted[1].mean[circ]).abs().max() > 0.1
    assert torch.all(zero[0].mean[circ] == 0) and torch.all(zero[1].mean[circ] == 0)
    # bonds and angles keep their fitted standardisation
    torch.testing.assert_close(zero[0].mean[aff], fitted[0].mean[aff])
    torch.testing.assert_close(zero[0].std, fitted[0].std)
    # the encoding stays invertible with the zero origin
    x = torch.as_tensor(cold[:4], dtype=torch.float64)
    z, frame, ld = zero[0].encode(x)
    back, ld_back = zero[0].decode(z, frame)
    torch.testing.assert_close(back, x, atol=1e-9, rtol=0)
    torch.testing.assert_close(ld + ld_back, torch.zeros_like(ld), atol=1e-9, rtol=0)
    with pytest.raises(InvalidInputError, match="torsion_origin"):
        fit_representation(zero[0], cold, "mean")


def test_resume_continues_where_the_run_stopped(pt_dirs, tmp_path):
    import pandas as pd

    cfg = _cfg(pt_dirs, ["AA", "AS"], steps=8, val_every_steps=4)
    straight = _train(cfg, tmp_path / "straight")
    # the wall-clock limit stops the run after its first step(s): validated, checkpointed
    cut = _train(_cfg(pt_dirs, ["AA", "AS"], steps=8, val_every_steps=4, max_minutes=1e-4),
                 tmp_path / "cut")
    assert 0 < cut["steps"] < 8
    with pytest.raises(InvalidInputError, match="resume"):
        _train(cfg, tmp_path / "cut")
    with pytest.raises(InvalidInputError, match="it trains"):
        _train(_cfg(pt_dirs, ["AS", "AA"]), tmp_path / "cut", resume=True)
    resumed = _train(cfg, tmp_path / "cut", resume=True)
    assert resumed["steps"] == 8 and resumed["resumed"]
    # same batches, optimiser and schedule state: the same weights as the uninterrupted run
    a = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=1e-5, atol=1e-6)
    assert resumed["last"]["val/acceptance_flow"] == pytest.approx(
        straight["last"]["val/acceptance_flow"], abs=1e-5)
    m = pd.read_csv(tmp_path / "cut" / "metrics.csv")  # the interrupted rows are kept
    assert m.dropna(subset=["train/loss"])["step"].tolist() == list(range(1, 9))
    assert m.dropna(subset=["val/acceptance_flow"])["step"].tolist()[0] == 0
