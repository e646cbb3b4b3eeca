"""Red-flag monitors fire at the right step, stop the run, keep the last good checkpoint."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import validation_toys as vt

from moltune.validation import logs
from moltune.validation.monitors import (
    EXIT_STOPPED,
    AdapterDriftMonitor,
    AsymmetryMonitor,
    EnergyExplosionMonitor,
    GradNormMonitor,
    LossRatioMonitor,
    MonitorConfig,
    NonFiniteMonitor,
    QualityFloorMonitor,
    RunStopped,
    default_monitors,
    exit_code_for,
    raise_if_stopped,
)


def _events(run: Path) -> list[dict]:
    p = run / "redflags.json"
    return json.loads(p.read_text()) if p.exists() else []


def _replay(tmp_path, monitor, val, train=None, epochs=None, grad_scale=None, n_batches=2):
    run = tmp_path / "run"
    epochs = epochs or len(next(iter(val.values())))
    vt.fit(vt.ReplayModule(val, train, grad_scale, n_batches), run, epochs, [monitor])
    return run


def test_energy_explosion_stops_real_run_and_keeps_good_checkpoint(runs):
    run = runs("explode")
    stopped = json.loads((run / "stopped.json").read_text())
    assert stopped["monitor"] == "energy_explosion" and stopped["action"] == "stop"
    # the right evaluation: the first one whose logged inverse energy exceeds the bound
    m = logs.read_metrics(run)
    e = logs.epoch_series(m, "val/energy_inverse_kjmol")
    ref = logs.epoch_series(m, "val/energy_source_ref_kjmol")
    excess = (e - ref) / vt.KT_SOURCE
    first = int(excess[excess > 1e4].index[0])
    assert stopped["epoch"] == first and int(e.index[-1]) == first  # stopped right there
    assert first >= 5  # the toy needs several epochs to explode
    assert stopped["values"]["excess_kT"] == pytest.approx(float(excess.loc[first]), rel=1e-5)
    assert stopped["step"] == (first + 1) * 2  # two batches per epoch
    # the last good checkpoint is the previous epoch, finite, and below the bound
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == first - 1
    a = float(ckpt["state_dict"]["a"])
    assert math.isfinite(a) and 1.5 / a**2 < 1e4
    assert not (run / "checkpoints" / f"epoch={first}-step={stopped['step']}.ckpt").exists()
    assert stopped["last_good_checkpoint"].endswith("last.ckpt")
    assert "energy_explosion" in (run / "stopped.md").read_text()
    assert exit_code_for(run) == EXIT_STOPPED
    with pytest.raises(RunStopped) as exc:
        raise_if_stopped(run)
    assert exc.value.exit_code == EXIT_STOPPED and "energy_explosion" in str(exc.value)


def test_plain_checkpoint_would_have_saved_the_broken_state(runs):
    """The control: Lightning's own ModelCheckpoint overwrites last.ckpt with the exploded state."""
    run = runs("explode_unguarded")
    stopped = json.loads((run / "stopped.json").read_text())
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == stopped["epoch"]
    assert 1.5 / float(ckpt["state_dict"]["a"]) ** 2 > 1e4


def test_loss_ratio_warns_on_real_overfitting_run_at_the_right_epoch(runs):
    """Tiny-data MLP: the warning comes at the first epoch whose val/train ratio passes 10."""
    run = runs("overfit")
    m = logs.read_metrics(run)
    ratio = logs.epoch_series(m, "val/loss") / logs.epoch_series(m, "train/loss")
    expected = int(ratio[ratio > 10].index[0])
    ev = [e for e in _events(run) if e["monitor"] == "loss_ratio"]
    assert ev and ev[0]["epoch"] == expected and ev[0]["action"] == "warn"
    assert ev[0]["values"]["ratio"] == pytest.approx(float(ratio.loc[expected]), rel=1e-4)
    assert exit_code_for(run) == 0  # a warning does not stop the run


def test_healthy_and_never_learning_runs_raise_no_alarm(runs):
    for name in ("healthy", "lr0"):
        run = runs(name)
        assert _events(run) == [] and exit_code_for(run) == 0


def test_nonfinite_validation_stops_at_that_epoch(tmp_path):
    loss = [3.0, 2.0, 1.5, math.nan, 1.0, 0.9]
    run = _replay(tmp_path, NonFiniteMonitor(action="stop", run_dir=tmp_path / "run"), {"val/loss": loss})
    st = json.loads((run / "stopped.json").read_text())
    assert st["epoch"] == 3 and st["step"] == 8 and st["values"]["val/loss"] == "nan"
    assert logs.epoch_series(logs.read_metrics(run), "val/loss").index.max() == 3


def test_nonfinite_gradient_caught_before_the_step(tmp_path):
    run = _replay(tmp_path, NonFiniteMonitor(action="stop", run_dir=tmp_path / "run"),
                  {"val/loss": [1.0] * 6}, grad_scale={5: math.inf})
    st = json.loads((run / "stopped.json").read_text())
    assert st["step"] == 5 and st["values"]["grad_norm"] == "inf"


def test_isolated_nonfinite_training_batch_is_tolerated_with_train_patience(tmp_path):
    """Trainers may skip one bad batch; three in a row stop the run at the third."""
    mon = NonFiniteMonitor(action="stop", train_patience=3, run_dir=tmp_path / "run")
    run = _replay(tmp_path, mon, {"val/loss": [1.0] * 8},
                  grad_scale={3: math.inf, 6: math.nan, 7: math.nan, 8: math.inf, 9: 1.0})
    st = json.loads((run / "stopped.json").read_text())
    assert st["step"] == 8 and st["values"]["consecutive_bad_batches"] == 3


def test_grad_norm_warns_at_the_step(tmp_path):
    mon = GradNormMonitor(max_norm=1e4, run_dir=tmp_path / "run")
    run = _replay(tmp_path, mon, {"val/loss": [1.0] * 5}, grad_scale={7: 5e4, 8: 2e3})
    ev = _events(run)
    assert [e["step"] for e in ev] == [7] and ev[0]["values"]["grad_norm"] == pytest.approx(5e4)
    assert not (run / "stopped.json").exists() and exit_code_for(run) == 0


def test_grad_norm_prefers_the_logged_unclipped_norm(tmp_path):
    """Trainers that clip inside training_step log the unclipped norm; the monitor reads it."""
    mon = GradNormMonitor(max_norm=100.0, run_dir=tmp_path / "run")
    train = {"train/grad_norm": [1.0, 3.0, 250.0, 2.0]}
    run = _replay(tmp_path, mon, {"val/loss": [1.0] * 4}, train, grad_scale={1: 1e6})
    ev = _events(run)  # the computed 1e6 at step 1 is ignored once the metric is logged
    assert [e["epoch"] for e in ev] == [2] and ev[0]["values"]["grad_norm"] == 250.0


def test_energy_explosion_with_patience(tmp_path):
    n = 8
    energy = [-80.0, -79.0, 3e4, -80.0, 3e4, 5e4, 8e4, 1e5]  # one spike, then a real explosion
    val = {"val/energy_forward_kjmol": energy, "val/energy_target_ref_kjmol": [-85.0] * n,
           "val/kT_target_kjmol": [2.494] * n}
    mon = EnergyExplosionMonitor(max_kT=1e4, action="stop", patience=2, run_dir=tmp_path / "run")
    run = _replay(tmp_path, mon, val)
    st = json.loads((run / "stopped.json").read_text())
    assert st["epoch"] == 5 and "forward direction" in st["message"]
    assert st["values"]["excess_kT"] == pytest.approx((5e4 + 85) / 2.494)


def test_resumed_run_moves_previous_flags_aside(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "stopped.json").write_text('{"monitor": "old"}')
    (run / "redflags.json").write_text("[]")
    vt.fit(vt.ReplayModule({"val/loss": [1.0, 0.9]}), run, 2, default_monitors(None, run))
    assert exit_code_for(run) == 0 and not (run / "redflags.json").exists()
    assert json.loads((run / "stopped.previous.json").read_text())["monitor"] == "old"


def test_energy_explosion_uses_configured_kT_when_none_logged(tmp_path):
    val = {"val/energy_inverse_kjmol": [10.0, 100.0, 3e4], "val/energy_source_ref_kjmol": [0.0] * 3}
    mon = EnergyExplosionMonitor(max_kT=1e4, default_kT_kjmol=2.494, action="stop",
                                 run_dir=tmp_path / "run")
    run = _replay(tmp_path, mon, val)
    st = json.loads((run / "stopped.json").read_text())
    assert st["epoch"] == 2 and st["values"]["val/kT_source_kjmol"] == 2.494


def test_asymmetry_warns_when_inverse_turns_worse(tmp_path):
    fwd = [10.0 * 0.8**i for i in range(10)]
    inv = [10.0 * 0.8**i for i in range(5)] + [3.3, 3.6, 4.5, 6.0, 9.0]  # rises from epoch 5
    mon = AsymmetryMonitor(window=5, run_dir=tmp_path / "run")
    run = _replay(tmp_path, mon, {"val/loss_forward": fwd, "val/loss_inverse": inv})
    ev = _events(run)
    # epoch 7's window (5.12, 4.10, 3.3, 3.6, 4.5) still ends below its start; epoch 8's
    # (4.10, 3.3, 3.6, 4.5, 6.0) rises by 46% with Kendall tau 0.6 while forward keeps falling
    assert len(ev) == 1 and ev[0]["epoch"] == 8 and ev[0]["monitor"] == "asymmetry"
    assert "val/loss_forward improved" in ev[0]["message"]


def test_loss_ratio_fires_when_val_exceeds_ten_times_train(tmp_path):
    val = {"val/loss": [1.2, 1.5, 3.0, 12.0, 20.0]}
    train = {"train/loss": [1.0] * 5}
    mon = LossRatioMonitor(max_ratio=10, action="stop", run_dir=tmp_path / "run")
    run = _replay(tmp_path, mon, val, train)
    st = json.loads((run / "stopped.json").read_text())
    assert st["epoch"] == 3 and st["values"]["ratio"] == pytest.approx(12.0)


def test_quality_floor_stops_ligand_run_when_connectivity_falls_below_half(tmp_path):
    val, train, _ = vt.ligand_history(collapse=True, one_sample=False)
    mon = QualityFloorMonitor({"val/connectivity": 0.5}, action="stop", run_dir=tmp_path / "run")
    run = _replay(tmp_path, mon, val, train)
    st = json.loads((run / "stopped.json").read_text())
    assert st["epoch"] == 6 and st["values"]["val/connectivity"] == pytest.approx(0.40)


def test_one_sample_ligand_validation_trips_loss_ratio_at_epoch_zero(tmp_path):
    val, train, _ = vt.ligand_history(collapse=False, one_sample=True)
    run = _replay(tmp_path, LossRatioMonitor(run_dir=tmp_path / "run"), val, train)
    ev = _events(run)
    assert ev[0]["epoch"] == 0 and ev[0]["values"]["ratio"] == pytest.approx(122 / 0.605, rel=1e-3)


def test_adapter_drift(tmp_path):
    mon = AdapterDriftMonitor(action="stop", run_dir=tmp_path / "run")
    run = _replay(tmp_path, mon, {"adapter/gamma_mean": [1.0, 1.5, 3.0, 6.0, 12.0, 20.0]})
    st = json.loads((run / "stopped.json").read_text())
    assert st["epoch"] == 4 and st["values"]["adapter/gamma_mean"] == 12.0


def test_transport_history_stops_on_energy_with_default_monitors(tmp_path):
    val, train = vt.transport_history()
    run = tmp_path / "run"
    vt.fit(vt.ReplayModule(val, train), run, 20, default_monitors(None, run))
    st = json.loads((run / "stopped.json").read_text())
    excess = [(e - (-85.0)) / vt.KT_SOURCE for e in val["val/energy_inverse_kjmol"]]
    first = next(i for i, x in enumerate(excess) if x > 1e4)
    assert st["monitor"] == "energy_explosion" and st["epoch"] == first


def test_config_roundtrip_and_bad_action():
    cfg = {"energy_explosion": {"max_kT": 50.0, "action": "warn"}, "grad_norm": {"enabled": False}}
    mons = default_monitors(cfg)
    names = [m.name for m in mons]
    assert "grad_norm" not in names and len(names) == 6
    ee = next(m for m in mons if m.name == "energy_explosion")
    assert ee.max_kT == 50.0 and ee.action == "warn"
    assert isinstance(MonitorConfig().quality_floor.floors, dict)
    with pytest.raises(ValueError):
        GradNormMonitor(action="explode")
    with pytest.raises(KeyError):
        default_monitors({"energy_explosin": {}})
    # the resolved config a run folder keeps (config.yaml) reads back to the same monitors
    import yaml

    from moltune.common.config import from_dict, to_yaml

    assert from_dict(MonitorConfig, yaml.safe_load(to_yaml(MonitorConfig()))) == MonitorConfig()
