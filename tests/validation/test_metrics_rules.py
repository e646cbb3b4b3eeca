"""Metric roles from a log's own names, overrides, thresholds from YAML, and one rule per check:
a monitor (history so far) and the diagnosis (whole run) reach the same verdict."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import validation_toys as vt

from moltune.cli.main import main
from moltune.common.errors import InvalidInputError
from moltune.validation import logs, rules
from moltune.validation import metrics as mn
from moltune.validation.diagnose import diagnose_run, run_diagnosis
from moltune.validation.monitors import default_monitors


@pytest.mark.parametrize("columns, train, val", [
    (["train/loss", "val/loss"], "train/loss", "val/loss"),
    (["train_loss_step", "train_loss_epoch", "val_loss"], "train_loss_epoch", "val_loss"),
    (["loss/train", "loss/val", "Connectivity/val", "Validity/val"], "loss/train", "loss/val"),
    (["loss", "val_loss", "accuracy", "val_accuracy"], "loss", "val_loss"),
    (["Train-Loss", "Valid.Loss"], "Train-Loss", "Valid.Loss"),
    (["training/loss", "eval/loss", "test/loss"], "training/loss", "eval/loss"),
    (["train/nll", "val/nll", "val/acc"], "train/nll", "val/nll"),  # the only loss-like metric
])
def test_losses_resolved_in_every_convention(columns, train, val):
    res = mn.resolve(columns)
    assert res.roles["train_loss"] == train and res.roles["val_loss"] == val


def test_quality_metrics_have_directions_and_test_is_apart():
    res = mn.resolve(["loss/train", "loss/val", "Connectivity/val", "val_acc", "valid/auroc",
                      "val/rmsd", "test_acc", "lr-Adam", "grad_2.0_norm_total", "hp_metric",
                      "adapter/gamma_mean", "val/n_samples"])
    assert res.quality == {"val/acc": "higher", "val/auroc": "higher",
                           "val/connectivity": "higher", "val/rmsd": "lower"}
    assert res.roles["lr"] == "lr-Adam" and res.roles["grad_norm"] == "grad_2.0_norm_total"
    assert res.roles["gamma_mean"] == "adapter/gamma_mean"
    assert res.roles["val_samples"] == "val/n_samples"
    assert "test_acc" in res.unused and "hp_metric" not in res.unused
    assert all("test" not in c for c in res.roles.values())


def test_exact_contract_name_wins_and_overrides_win_over_everything():
    assert mn.resolve(["val/loss", "val_loss", "train/loss"]).roles["val_loss"] == "val/loss"
    over = mn.parse_overrides(["val_loss=val/nll_total", "quality:conn=Conn (val)"])
    res = mn.resolve(["train/loss", "val/loss", "val/nll_total", "Conn (val)"], over)
    assert res.roles["val_loss"] == "val/nll_total" and "val/loss" in res.unused
    assert res.roles["quality:conn"] == "Conn (val)"
    with pytest.raises(InvalidInputError, match="unknown metric role"):
        mn.parse_overrides(["valloss=x"])
    with pytest.raises(InvalidInputError, match="not in the log"):
        mn.resolve(["train/loss"], {"val/loss": "nope"})


def test_validation_columns_that_fit_no_role_are_reported(tmp_path):
    rows = ["epoch,step,train/loss,val/loss_a,val/loss_b"]
    for e in range(6):
        rows += [f"{e},{e},{1.0 / (e + 1)},,", f"{e},{e},,{1.1 / (e + 1)},{1.2 / (e + 1)}"]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    d = run_diagnosis(tmp_path, out=tmp_path / "a")
    f = next(f for f in d.findings if f.id == "no_validation")
    assert "val/loss_a" in f.title and "could be assigned" in f.title
    # assigned by hand, it is used
    d = run_diagnosis(tmp_path, out=tmp_path / "b", metrics=mn.parse_overrides(["val_loss=val/loss_b"]))
    assert "no_validation" not in d.ids
    assert "| val_loss | `val/loss_b` |" in (tmp_path / "b" / "diagnosis.md").read_text()


def test_yaml_config_sets_thresholds_and_roles(tmp_path):
    rows = ["epoch,step,loss,valid_nll"]
    for e, (t, v) in enumerate([(1.0, 1.1), (0.6, 0.7), (0.4, 0.5), (0.3, 0.6), (0.2, 0.8)]):
        rows += [f"{e},{e},{t},", f"{e},{e},,{v}"]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    cfg = tmp_path / "diag.yaml"
    cfg.write_text("overfit_threshold: 1.2\nmetrics:\n  val_loss: valid_nll\n")
    t, roles = rules.load_thresholds(cfg)
    assert t.overfit_threshold == 1.2 and roles == {"val_loss": "valid_nll"}
    assert main(["runs", "overfitting", str(tmp_path), "--config", str(cfg),
                 "--out", str(tmp_path / "o")]) == 0
    data = json.loads((tmp_path / "o" / "overfitting.json").read_text())
    assert data["columns"] == {"train_loss": "loss", "val_loss": "valid_nll"}
    assert data["recommended_epoch"] == 2 and data["first_overfit_epoch"] == 3
    assert main(["runs", "overfitting", str(tmp_path), "--metric", "val_loss=valid_nll",
                 "--out", str(tmp_path / "p")]) == 0
    cfg.write_text("overfit_threshhold: 1\n")
    assert main(["runs", "diagnose", str(tmp_path), "--config", str(cfg)]) == 2


def test_thresholds_refuse_nonsense():
    with pytest.raises(InvalidInputError):
        rules.Thresholds(explosion_kT=math.nan)
    with pytest.raises(InvalidInputError):
        rules.Thresholds(explosion_kT=-1.0)


def test_rules_on_histories():
    assert rules.gradient_explosion([1.0] * 30).__class__ is type(None)
    v = rules.gradient_explosion([1.0] * 25 + [150.0, 1.0, 90.0, 2e4])
    assert v.at == 25 and v.positions == [25, 28] and v.values["factor"] == pytest.approx(150)
    assert rules.gradient_explosion([1.0] * 5 + [150.0]) is None  # too little history to judge
    q = rules.quality_floor([0.2, 0.6, 0.7, 0.4, 0.45], 0.5)
    assert q.at == 0 and q.positions == [0, 3, 4] and q.newest.values["best_so_far"] == 0.7
    e = rules.energy_explosion([0.0, 3e4, math.nan], [0.0] * 3, [2.494] * 3)
    assert e.at == 1 and e.positions == [1, 2]
    assert rules.violates_now(e, 3) and not rules.violates_now(e, 4)


def test_monitor_and_diagnosis_reach_the_same_verdict(tmp_path):
    """One history, replayed through a real Lightning run with the default monitors attached:
    each monitor fires at the evaluation the diagnosis names as the first violation."""
    n = 30
    conn = [0.9] * 12 + [0.45] * (n - 12)
    gamma = [1.0] * 20 + [12.0] * (n - 20)
    energy = [-80.0] * 8 + [3e4] * (n - 8)
    val = {mn.VAL_LOSS: vt.geometric(1.0, 0.5, n), mn.VAL_CONNECTIVITY: conn,
           mn.ADAPTER_GAMMA_MEAN: gamma, mn.VAL_ENERGY_INVERSE: energy,
           mn.VAL_ENERGY_SOURCE_REF: [-85.0] * n, mn.VAL_KT_SOURCE: [2.494] * n}
    grad = [1.0] * 16 + [500.0] + [1.0] * (n - 17)
    train = {mn.TRAIN_LOSS: vt.geometric(1.0, 0.4, n), mn.TRAIN_GRAD_NORM: grad}
    cfg = {name: {"action": "warn"} for name in ("energy_explosion", "quality_floor",
                                                 "adapter_drift")}
    run = tmp_path / "run"
    vt.fit(vt.ReplayModule(val, train), run, n, default_monitors(cfg, run))
    fired = {}
    for e in json.loads((run / "redflags.json").read_text()):
        fired.setdefault(e["monitor"], e)
    d = diagnose_run(logs.load_run(run))
    by_id = {f.id: f for f in d.findings}
    assert fired["quality_floor"]["epoch"] == by_id["quality_collapse"].evidence[
        "first_epoch_below_floor"] == 12
    assert fired["adapter_drift"]["epoch"] == by_id["adapter_drift"].evidence[
        "first_epoch_outside"] == 20
    assert fired["energy_explosion"]["epoch"] == by_id["inverse_explosion"].evidence[
        "first_epoch_above_bound"] == 8
    m = logs.load_run(run).metrics
    first_step = by_id["gradient_explosion"].evidence["first_violation_step"]
    epoch_of = m[(m["metric"] == "train/grad_norm_step") & (m["step"] == first_step)]["epoch"]
    assert fired["grad_norm"]["epoch"] == int(epoch_of.iloc[0]) == 16


def test_plain_summarywriter_and_keras_csvlogger_logs(tmp_path):
    """No epochs in a SummaryWriter log: training steps align with the validation closing their
    window. A Keras CSVLogger ``training.log`` (epoch, loss, val_loss, ...) is read as well."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "tb" / "run1"))
    step, val = 0, []
    for e in range(10):
        for _ in range(20):
            w.add_scalar("Loss/train", 1.0 / (1 + 0.1 * step), step)
            step += 1
        val.append(1.0 / (1 + 0.1 * step) * (1 + 0.08 * max(0, e - 4) ** 2))
        w.add_scalar("Loss/val", val[-1], step)
    w.close()
    run = logs.load_run(tmp_path / "tb")
    train = logs.series(run.metrics, "train/loss")
    assert list(train.index) == list(range(10))
    assert train.loc[1] == pytest.approx(np.mean([1.0 / (1 + 0.1 * s) for s in range(20, 40)]))
    d = diagnose_run(run)
    over = d.findings[0]
    assert over.id == "overfitting" and over.evidence["recommended_epoch"] == int(np.argmin(val))
    assert over.columns["val/loss"] == "Loss/val"
    keras = tmp_path / "keras"
    keras.mkdir()
    (keras / "training.log").write_text(
        "epoch,accuracy,loss,val_accuracy,val_loss\n" + "\n".join(
            f"{e},{a},{lo},{va},{vl}" for e, (a, lo, va, vl) in enumerate(
                [(0.6, 0.9, 0.62, 0.85), (0.8, 0.5, 0.8, 0.6), (0.9, 0.3, 0.85, 0.5),
                 (0.95, 0.2, 0.86, 0.52), (0.97, 0.1, 0.84, 0.7), (0.99, 0.05, 0.83, 0.9)])) + "\n")
    d = diagnose_run(logs.load_run(keras))
    assert d.ids[0] == "overfitting" and d.findings[0].evidence["recommended_epoch"] == 2
    assert d.findings[0].columns == {"val/loss": "val_loss", "train/loss": "loss"}


def test_validation_size_keys_by_their_words():
    for key in ("n_val", "val_set_size", "data/num_validation_samples", "val_split"):
        assert mn.is_val_size_key(key), key
    for key in ("val_batch_size", "check_val_every_n_epoch", "limit_val_batches", "train_size"):
        assert not mn.is_val_size_key(key), key


def test_monitors_read_other_naming_conventions(tmp_path):
    """A module logging Lightning-style names (val_loss, train_loss) still trips loss_ratio."""
    run = tmp_path / "run"
    vt.fit(vt.ReplayModule({"val_loss": [1.2, 1.5, 3.0, 12.0, 20.0]}, {"train_loss": [1.0] * 5}),
           run, 5, default_monitors({"loss_ratio": {"action": "stop"}}, run))
    st = json.loads((run / "stopped.json").read_text())
    assert st["monitor"] == "loss_ratio" and st["epoch"] == 3


def test_issue_diffsbdd_example_reports_the_collapse_first(tmp_path):
    """loss/train, loss/val, Connectivity/val; connectivity falls to 0 while the loss falls, one
    validation complex: the collapse comes first, in the log's own names."""
    val, train, _ = vt.ligand_history(collapse=True, one_sample=True)
    rows = ["epoch,step,loss/train,loss/val,Connectivity/val,Validity/val"]
    for e in range(10):
        rows += [f"{e},{2 * e},{train['train/loss'][e]},,,",
                 f"{e},{2 * e + 1},,{val['val/loss'][e]},{val['val/connectivity'][e]},"
                 f"{val['val/validity'][e]}"]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "hparams.yaml").write_text("n_val: 1\nlr: 0.0001\n")
    d = run_diagnosis(tmp_path)
    assert d.ids[:2] == ["quality_collapse", "small_validation"]
    top = d.findings[0]
    assert top.title.startswith("Connectivity/val collapsed from 0.92")
    assert top.columns["val/connectivity"] == "Connectivity/val"
    assert next(f for f in d.findings if f.id == "overfitting").severity == "low"
