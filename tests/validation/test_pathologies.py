"""Genuine small training runs with known pathologies, logged the way researchers log them
(moltune's, Lightning's default, DiffSBDD's and Keras-style names; CSV and TensorBoard): the right
finding comes first and nothing contradicts it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pathology_runs import CASES

from moltune.cli.main import main
from moltune.validation import logs
from moltune.validation.diagnose import diagnose_run
from moltune.validation.overfitting import detect_overfitting
from moltune.validation.vocabulary import SEVERITY_RANK

# findings that would contradict the expected one if they were reported at medium or worse
CONTRADICTS = {
    "healthy": set(),  # anything medium or worse contradicts a healthy verdict
    "overfitting": {"not_learning", "small_validation", "quality_collapse", "nonfinite"},
    "not_learning": {"overfitting", "quality_collapse", "small_validation"},
    "nonfinite": {"not_learning", "overfitting", "short_run"},
    "small_validation": {"overfitting", "not_learning", "quality_collapse"},
    "gradient_explosion": {"not_learning", "overfitting", "nonfinite", "quality_collapse"},
    "quality_collapse": {"overfitting", "not_learning", "small_validation"},
}


def _log(run, logger):
    return run / logger  # csv/lightning_logs/version_0/ or tb/lightning_logs/version_0/


@pytest.mark.parametrize("logger", ["csv", "tb"])
@pytest.mark.parametrize("name", list(CASES))
def test_right_finding_first_and_nothing_contradicts(pathology, name, logger):
    case = CASES[name]
    run = logs.load_run(_log(pathology(name), logger))
    d = diagnose_run(run)
    ids = d.ids
    assert ids[0] == case.expect, [(f.id, f.severity, f.title) for f in d.findings]
    serious = {f.id for f in d.findings[1:] if SEVERITY_RANK[f.severity] <= SEVERITY_RANK["medium"]}
    if case.expect == "healthy":
        assert not serious
    else:
        assert "healthy" not in ids
        assert not serious & CONTRADICTS[case.expect], d.findings
    # the report says which column it read for the losses, in the run's own names
    assert run.resolution.roles["val_loss"].lower().replace("/", "_").replace("_epoch", "") in (
        "val_loss", "loss_val")
    top = d.findings[0]
    if top.id != "healthy":
        assert top.columns, top  # the evidence names the columns it came from
        for column in top.columns.values():
            assert column in set(run.resolution.rename)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.expect == "overfitting"])
def test_overfitting_recommendation_near_true_validation_minimum(pathology, name, tmp_path):
    run = pathology(name)
    out = tmp_path / "o"
    assert main(["runs", "overfitting", str(_log(run, "csv")), "--out", str(out)]) == 0
    data = json.loads((out / "overfitting.json").read_text())
    val = np.array([r["val"] for r in data["ratio_series"]])
    key = "step" if data["unit"] == "step" else "epoch"
    keys = [r[key] for r in data["ratio_series"]]
    true_min = int(np.argmin(val))
    rec = keys.index(data[f"recommended_{key}"])
    assert abs(rec - true_min) <= 2
    first = keys.index(data[f"first_overfit_{key}"])
    assert first > true_min and val[first] > 1.01 * val[true_min]
    cols = data["columns"]
    expected = {"diffsbdd": "loss/val", "keras": "val_loss", "moltune": "val/loss",
                "lightning": "val_loss"}[CASES[name].naming]
    assert cols["val_loss"] == expected
    if CASES[name].val_check_interval < 1:  # several validations per epoch: a step timeline
        assert data["unit"] == "step" and len(keys) >= 2 * CASES[name].epochs - 1
    # TensorBoard gives the same answer
    tb = logs.load_run(_log(run, "tb"))
    res = detect_overfitting(tb.metrics)
    assert res.recommended_epoch == data["recommended_epoch"]


def test_validation_every_3_epochs_is_read_per_epoch(pathology):
    run = logs.load_run(_log(pathology("validation_every_3_epochs"), "csv"))
    val = logs.series(run.metrics, "val/loss")
    assert list(val.index) == [2, 5, 8, 11, 14, 17, 20, 23]
    assert logs.timeline(run.metrics) == "epoch"


def test_fraction_val_size_is_not_a_sample_count(pathology):
    run = logs.load_run(_log(pathology("val_size_as_fraction"), "csv"))
    assert run.settings["val_size"] == 0.2
    d = diagnose_run(run)
    assert "small_validation" not in d.ids
    assert d.summary["validation samples"].startswith("fraction 0.2")


def test_test_metrics_are_kept_apart(pathology):
    run = logs.load_run(_log(pathology("test_metrics_kept_apart"), "csv"))
    res = run.resolution
    assert res.roles["val_loss"] == "val_loss" and res.roles["train_loss"] == "loss"
    assert "test_loss" in res.unused and "test_accuracy" in res.unused
    assert "test_loss" not in res.roles.values()
    assert res.quality == {"val/accuracy": "higher"}


def test_two_sample_validation_names_its_source(pathology):
    d = diagnose_run(logs.load_run(_log(pathology("two_sample_validation"), "tb")))
    ev = d.findings[0].evidence
    assert ev["n_validation_samples"] == 2 and ev["source"] == "val_set_size"  # no fixed key


def test_lr_too_small_says_so(pathology):
    d = diagnose_run(logs.load_run(_log(pathology("lr_too_small"), "csv")))
    f = d.findings[0]
    assert f.severity == "high" and "only" in f.title
    assert 0 < f.evidence["relative_improvement"] < 0.02
    assert f.evidence["lr"] == 1e-6


def test_gradient_spike_judged_against_the_run_itself(pathology):
    run = logs.load_run(_log(pathology("exploding_gradients"), "csv"))
    d = diagnose_run(run)
    ev = d.findings[0].evidence
    assert ev["max_over_median"] > 100 and ev["train/grad_norm_max"] < 1e4  # below any fixed bound
    assert ev["first_violation_step"] in CASES["exploding_gradients"].corrupt_steps
    assert d.findings[0].columns == {"train/grad_norm": "train/grad_norm"}


def test_accuracy_collapse_is_not_called_overfitting(pathology):
    d = diagnose_run(logs.load_run(_log(pathology("accuracy_collapse"), "csv")))
    top = d.findings[0]
    assert top.columns["val/accuracy"] == "Accuracy/val"
    assert top.evidence["val/accuracy_best"] > 0.9 and top.evidence["val/accuracy_last"] < 0.2
    over = [f for f in d.findings if f.id == "overfitting"]
    assert all(f.severity == "low" for f in over)


def test_diagnose_cli_writes_metrics_read(pathology, tmp_path):
    run = _log(pathology("overfitting"), "csv")
    assert main(["runs", "diagnose", str(run), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "diagnosis.md").read_text()
    assert "| val_loss | `loss/val` |" in md and "| train_loss | `loss/train` |" in md
    assert "Columns not used:" in md
    data = json.loads((tmp_path / "diagnosis.json").read_text())
    assert data[0]["id"] == "overfitting" and data[0]["columns"]["val/loss"] == "loss/val"
