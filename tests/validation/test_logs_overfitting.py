"""Log readers (Lightning CSV, TensorBoard, W&B CSV) and the overfitting detector on a real run."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from moltune.cli.main import main
from moltune.validation import logs
from moltune.validation.overfitting import detect_overfitting


def _wandb_history_export(tidy, path):
    """A W&B run-history CSV export (``_step``, ``epoch``, one column per key) of a tidy table."""
    wide = tidy.pivot_table(index=["step", "epoch"], columns="metric", values="value",
                            aggfunc="last", dropna=False).reset_index()
    wide = wide.rename(columns={"step": "_step"})
    wide.to_csv(path, index=False, na_rep="")


def _wandb_panel_export(tidy, metric, path, run_name="vivid-sun-7"):
    """A W&B chart-panel CSV export: ``Step``, ``RUN - metric``, ``__MIN`` / ``__MAX``."""
    sub = tidy[tidy["metric"] == metric]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Step", f"{run_name} - {metric}", f"{run_name} - {metric}__MIN",
                    f"{run_name} - {metric}__MAX"])
        for s, v in zip(sub["step"], sub["value"]):
            w.writerow([s, v, v, v])


def test_lightning_csv_keeps_nan_and_drops_blanks(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("epoch,step,train/loss_step,val/loss\n0,0,1.5,\n0,0,,nan\n1,1,inf,\n1,1,,2.0\n")
    t = logs.read_lightning_csv(p)
    assert len(t) == 4  # blanks are "not logged", nan / inf are kept
    val = logs.epoch_series(t, "val/loss")
    assert math.isnan(val.loc[0]) and val.loc[1] == 2.0
    assert logs.step_series(t, "train/loss").tolist() == [1.5, math.inf]


def test_tensorboard_and_wandb_match_lightning_csv(runs, tmp_path):
    run = runs("overfit")
    csv_t = logs.read_metrics(run / "metrics.csv")
    tb_t = logs.read_metrics(run / "tb")
    for name in ("train/loss", "val/loss"):
        a, b = logs.epoch_series(csv_t, name), logs.epoch_series(tb_t, name)
        assert list(a.index) == list(b.index)
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-6)
    hist = tmp_path / "wandb_history.csv"
    _wandb_history_export(csv_t, hist)
    wb_t = logs.read_metrics(hist)
    np.testing.assert_allclose(logs.epoch_series(wb_t, "val/loss").to_numpy(),
                               logs.epoch_series(csv_t, "val/loss").to_numpy(), rtol=1e-9)
    # panel exports (no epoch column): evaluations are numbered in order
    _wandb_panel_export(csv_t, "val/loss", tmp_path / "panel.csv")
    panel = logs.read_metrics(tmp_path / "panel.csv")
    assert panel["metric"].unique().tolist() == ["val/loss"]
    np.testing.assert_allclose(logs.epoch_series(panel, "val/loss").to_numpy(),
                               logs.epoch_series(csv_t, "val/loss").to_numpy(), rtol=1e-9)


def test_wandb_multi_run_export_needs_a_run_name(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("Step,a - val/loss,b - val/loss\n0,1.0,2.0\n1,0.5,1.5\n")
    from moltune.common.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="several runs"):
        logs.read_metrics(p)
    t = logs.read_wandb_csv(p, run="b")
    assert t["value"].tolist() == [2.0, 1.5]


def test_overfitting_same_answer_from_csv_tensorboard_and_wandb(runs, tmp_path):
    run = runs("overfit")
    res_csv = detect_overfitting(logs.read_metrics(run))
    res_tb = detect_overfitting(logs.read_metrics(run / "tb"))
    _wandb_history_export(logs.read_metrics(run), tmp_path / "wb.csv")
    res_wb = detect_overfitting(logs.read_metrics(tmp_path / "wb.csv"))
    assert res_csv.first_overfit_epoch is not None
    assert res_csv.first_overfit_epoch == res_tb.first_overfit_epoch == res_wb.first_overfit_epoch
    assert res_csv.recommended_epoch == res_tb.recommended_epoch == res_wb.recommended_epoch
    # the rule, checked by hand on the logged numbers: ratio > 1.5 after the lowest validation
    # loss, more than 1% above it; the recommendation is the lowest validation loss
    val = np.array(res_csv.val)
    ratio = val / np.array(res_csv.train)
    best = int(np.argmin(val))
    after = np.arange(len(val)) > best
    first = int(np.argmax((ratio > 1.5) & after & (val > 1.01 * val[best])))
    assert res_csv.epochs[first] == res_csv.first_overfit_epoch
    assert res_csv.recommended_epoch == res_csv.epochs[best]
    np.testing.assert_allclose(res_csv.ratio, ratio)


def test_overfitting_cli_writes_json_plot_and_recommends_checkpoint(tmp_path):
    """Replayed run with a checkpoint per epoch: the recommended file is the epoch before."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import validation_toys as vt

    from moltune.validation.monitors import GuardedModelCheckpoint

    train = {"train/loss": [1.0, 0.6, 0.4, 0.3, 0.2, 0.15]}
    val = {"val/loss": [1.1, 0.7, 0.5, 0.5005, 0.6, 0.8]}  # ratio 1.1 1.17 1.25 1.67 3.0 5.3
    run = tmp_path / "run"
    vt.fit(vt.ReplayModule(val, train), run, 6,
           [GuardedModelCheckpoint(dirpath=run / "checkpoints", save_top_k=-1)])
    rc = main(["runs", "overfitting", str(run), "--threshold", "1.5"])
    assert rc == 0
    data = json.loads((run / "overfitting.json").read_text())
    # epoch 3 (0.05% above the best, ratio 1.67) is no onset: epoch 4 is
    assert data["first_overfit_epoch"] == 4 and data["recommended_epoch"] == 2
    assert data["threshold"] == 1.5
    assert [round(r["ratio"], 3) for r in data["ratio_series"]][:4] == [1.1, 1.167, 1.25, 1.668]
    assert Path(data["recommended_checkpoint"]).name.startswith("epoch=2-")
    assert (run / "plots" / "overfitting.png").stat().st_size > 5000
    rc = main(["runs", "overfitting", str(run), "--threshold", "10", "--out", str(tmp_path / "o")])
    data = json.loads((tmp_path / "o" / "overfitting.json").read_text())
    assert data["first_overfit_epoch"] is None and data["recommended_epoch"] == 2  # lowest val


def test_negative_losses_use_the_difference(tmp_path):
    p = tmp_path / "metrics.csv"
    rows = ["epoch,step,train/loss_epoch,val/loss"]
    for e, (t, v) in enumerate([(-1.0, -0.9), (-2.0, -1.8), (-3.0, -1.5), (-4.0, -1.0)]):
        rows += [f"{e},{e},{t},", f"{e},{e},,{v}"]
    p.write_text("\n".join(rows) + "\n")
    res = detect_overfitting(logs.read_metrics(p), threshold=1.0)
    assert res.mode == "difference" and res.first_overfit_epoch == 2 and res.recommended_epoch == 1


def test_wandb_history_prefers_lightning_global_step(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("_step,_runtime,trainer/global_step,epoch,train/loss,val/loss\n"
                 "0,1.0,49,0,0.9,\n1,2.0,49,0,,1.1\n2,3.0,99,1,0.5,\n3,4.0,99,1,,0.8\n")
    t = logs.read_metrics(p)
    assert sorted(t["metric"].unique()) == ["train/loss", "val/loss"]
    assert logs.step_series(t, "val/loss").index.tolist() == [49, 99]
    assert logs.epoch_series(t, "val/loss").tolist() == [1.1, 0.8]


def test_validation_every_n_steps_uses_steps(tmp_path):
    """One long epoch with validation every 25 steps (val_check_interval), flow-style checkpoints."""
    from moltune.validation.diagnose import run_diagnosis

    rows = ["epoch,step,train/loss,val/loss"]
    for step in range(100):
        rows.append(f"0,{step},{1.0 - 0.009 * step},")
        if (step + 1) % 25 == 0:
            rows.append(f"0,{step + 1},,{[0.95, 0.70, 0.75, 1.40][(step + 1) // 25 - 1]}")
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "checkpoints").mkdir()
    for s in (25, 50, 75, 100):
        (tmp_path / "checkpoints" / f"step{s:06d}-acc0.5000.ckpt").write_bytes(b"")
    t = logs.read_metrics(tmp_path)
    assert logs.timeline(t) == "step"
    train = logs.series(t, "train/loss")
    # training loss averaged over the window since the previous evaluation
    assert train.index.tolist()[:4] == [25, 50, 75, 100]
    assert train.loc[50] == pytest.approx(np.mean([1.0 - 0.009 * s for s in range(25, 50)]))
    res = detect_overfitting(t, threshold=1.5,
                             checkpoints=sorted((tmp_path / "checkpoints").glob("*.ckpt")))
    ratios = [v / tr for v, tr in zip([0.95, 0.70, 0.75, 1.40], train.to_numpy()[:4])]
    first = next(i for i, r in enumerate(ratios) if r > 1.5 and i >= 2)  # 0, 1: new bests
    assert res.unit == "step" and res.first_overfit_step == [25, 50, 75, 100][first]
    assert res.recommended_step == 50  # the lowest validation loss
    assert res.first_overfit_epoch == 0
    assert res.recommended_checkpoint.endswith(f"step{res.recommended_step:06d}-acc0.5000.ckpt")
    d = run_diagnosis(tmp_path)
    over = next(f for f in d.findings if f.id == "overfitting")
    assert over.evidence["best_step"] == 50 and over.evidence["recommended_step"] == res.recommended_step
    assert d.summary["evaluations indexed by"] == "step"
