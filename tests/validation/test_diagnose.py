"""`diagnose` names the right finding first for runs with known pathologies (real Lightning runs,
and replayed histories matching the figures of the issue)."""

from __future__ import annotations

import json
import math

import pytest

from moltune.validation.diagnose import DiagnoseConfig, run_diagnosis
from moltune.validation.vocabulary import FINDINGS, SEVERITY_RANK


def _check_files(run, d):
    data = json.loads((run / "diagnosis.json").read_text())
    assert [f["id"] for f in data] == d.ids
    for f in data:
        assert f["id"] in FINDINGS
        assert set(f) >= {"id", "severity", "title", "evidence", "causes", "next_steps"}
        if f["id"] != "healthy":
            assert f["evidence"], f
    ranks = [SEVERITY_RANK[f["severity"]] for f in data if f["id"] != "healthy"]
    assert ranks == sorted(ranks)
    md = (run / "diagnosis.md").read_text()
    assert "## Key figures" in md and d.findings[0].title in md
    for name in d.plots.values():
        assert (run / "plots" / name).stat().st_size > 5000
    return data, md


def test_inverse_explosion_real_run(runs):
    run = runs("explode")
    d = run_diagnosis(run)
    data, md = _check_files(run, d)
    top = data[0]
    assert top["id"] == "inverse_explosion" and top["severity"] == "critical"
    ev = top["evidence"]
    assert ev["excess_kT_max"] > 1e4
    assert ev["val/reconstruction_rmsd_nm_last"] < 1e-6  # reconstruction looks perfect
    assert "looks perfect" in top["title"]
    assert ev["val/loss_forward_last"] < ev["val/loss_forward_first"]  # forward improved
    assert "forward_explosion" not in d.ids
    assert "stopped_by_monitor" in d.ids and "direction_asymmetry" in d.ids
    assert "![inverse_explosion](plots/diagnosis_energies.png)" in md


def test_transport_figures_of_the_issue(runs):
    """Reconstruction 1e-5 nm, inverse energy up to 5.6e12 kJ/mol, evaluation mean 9e17, NaN val."""
    run = runs("transport")
    d = run_diagnosis(run)
    data, _ = _check_files(run, d)
    assert d.ids[0] == "inverse_explosion"
    ev = data[0]["evidence"]
    assert ev["val/energy_inverse_kjmol_max"] == pytest.approx(5.6e12, rel=1e-5)
    assert ev["evaluation/inverse/energy_mean_kjmol"] == pytest.approx(9e17)
    assert ev["first_nonfinite_epoch"] == 18
    assert ev["val/reconstruction_rmsd_nm_last"] == pytest.approx(1e-5)
    assert ev["excess_kT_max"] == pytest.approx((5.6e12 + 85.0) / 2.494, rel=1e-4)
    assert "nonfinite" in d.ids and d.ids.index("nonfinite") > 0
    assert "healthy" not in d.ids


def test_never_learning_real_run(runs):
    run = runs("lr0")
    d = run_diagnosis(run)
    data, _ = _check_files(run, d)
    assert d.ids[0] == "not_learning"
    ev = data[0]["evidence"]
    assert abs(ev["relative_improvement"]) < 1e-6
    assert ev["lr"] == 0.0
    assert "learning rate is 0" in data[0]["title"]


def test_overfitting_real_run(runs):
    run = runs("overfit")
    d = run_diagnosis(run)
    data, _ = _check_files(run, d)
    assert d.ids[0] == "overfitting"
    ev = data[0]["evidence"]
    assert ev["train/loss_last"] < 0.1 * ev["train/loss_at_best_epoch"] or ev["val_train_ratio_last"] > 10
    assert ev["recommended_epoch"] < ev["first_overfit_epoch"]


def test_connectivity_collapse(runs):
    run = runs("ligand_collapse")
    d = run_diagnosis(run)
    data, _ = _check_files(run, d)
    assert d.ids[0] == "quality_collapse"
    ev = data[0]["evidence"]
    assert ev["val/connectivity_best"] == pytest.approx(0.92)
    assert ev["val/connectivity_last"] == 0.0
    assert ev["first_epoch_at_zero"] == 9 and ev["first_epoch_below_floor"] == 6
    assert ev["train/loss_first"] == pytest.approx(0.605, rel=1e-4)
    assert ev["train/loss_last"] == pytest.approx(0.197, rel=1e-4)
    assert "while train loss fell" in data[0]["title"]
    assert "small_validation" not in d.ids


def test_one_sample_validation(runs):
    run = runs("ligand_one_sample")
    d = run_diagnosis(run)
    data, _ = _check_files(run, d)
    assert d.ids[0] == "small_validation"
    ev = data[0]["evidence"]
    assert ev["n_validation_samples"] == 1
    assert ev["val/loss_min"] == 122 and ev["val/loss_max"] == 10991
    # the val/train gap is reported, but demoted: the validation signal cannot be trusted
    over = next(f for f in data if f["id"] == "overfitting")
    assert over["severity"] == "low" and "not trustworthy" in over["title"]


def test_one_sample_detected_from_volatility_alone(runs):
    """Without any declared size, the swings (122..10991 vs a smooth train loss) give it away."""
    run = runs("ligand_one_sample")
    d = run_diagnosis(run, out=run / "vol", cfg=DiagnoseConfig(n_val_keys=()))
    assert d.ids[0] == "small_validation"
    ev = d.findings[0].evidence
    assert "n_validation_samples" not in ev
    assert ev["val_zigzag"] > 5 * ev["train_zigzag"] and ev["val_jumps_over_factor"] >= 2


def test_ligand_figures_of_the_issue_rank_collapse_first(runs):
    run = runs("ligand_full")
    d = run_diagnosis(run)
    assert d.ids[:2] == ["quality_collapse", "small_validation"]


def test_healthy_real_run(runs):
    run = runs("healthy")
    d = run_diagnosis(run)
    data, md = _check_files(run, d)
    assert d.ids[0] == "healthy"
    assert all(SEVERITY_RANK[f["severity"]] >= SEVERITY_RANK["low"] for f in data)
    assert "**Healthy.**" in md
    assert data[0]["evidence"]["train_relative_improvement"] > 0.9
    assert not (run / "redflags.json").exists() and not (run / "stopped.json").exists()


def test_plain_lightning_folder_with_version_dirs(runs, tmp_path):
    """A CSVLogger folder (lightning_logs/version_N/metrics.csv + hparams.yaml) is readable."""
    import shutil

    src = runs("lr0")
    for v in (0, 1):
        dst = tmp_path / "lightning_logs" / f"version_{v}"
        dst.mkdir(parents=True)
        shutil.copy(src / "metrics.csv", dst / "metrics.csv")
        shutil.copy(src / "hparams.yaml", dst / "hparams.yaml")
    d = run_diagnosis(tmp_path)
    assert d.ids[0] == "not_learning"
    assert "version_1" in d.summary["log"]
    assert (tmp_path / "diagnosis.md").exists()


def test_finding_without_evidence_is_refused():
    from moltune.validation.diagnose import Finding

    with pytest.raises(ValueError):
        Finding("overfitting", "high", "x", {})
    with pytest.raises(ValueError):
        Finding("made_up", "high", "x", {"a": 1})
    assert math.isfinite(DiagnoseConfig().explosion_kT)


def test_flow_acceptance_collapse_and_logged_val_size(tmp_path):
    """Acceptance (floor 0) is judged by the drop rule; `val/n_samples` gives the validation size."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import validation_toys as vt

    val = {"val/loss": [5.0, 4.0, 3.5, 3.2, 3.0, 2.9], "val/n_samples": [512] * 6,
           "val/acceptance_flow": [0.05, 0.20, 0.31, 0.28, 0.10, 0.02]}
    train = {"train/loss": [5.5, 4.2, 3.6, 3.3, 3.1, 2.95]}
    vt.fit(vt.ReplayModule(val, train), tmp_path, 6)
    d = run_diagnosis(tmp_path)
    assert d.ids[0] == "quality_collapse" and d.findings[0].severity == "high"
    ev = d.findings[0].evidence
    assert ev["val/acceptance_flow_best"] == pytest.approx(0.31) and ev["best_epoch"] == 2
    assert "small_validation" not in d.ids
    assert d.summary["val/acceptance_flow first -> last"] == "0.05 -> 0.02"


def test_offset_nll_that_improves_is_not_called_not_learning(tmp_path):
    """Flow NLLs sit near -300: a steady 1.7% improvement is far beyond the noise."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import validation_toys as vt

    train = {"train/loss": [-300.0, -301.1, -301.9, -303.2, -304.0, -305.1]}
    val = {"val/loss": [-299.0, -300.2, -301.0, -302.1, -303.0, -304.2]}
    vt.fit(vt.ReplayModule(val, train), tmp_path, 6)
    d = run_diagnosis(tmp_path)
    assert d.ids[0] == "healthy" and "not_learning" not in d.ids
    flat = tmp_path / "flat"
    vt.fit(vt.ReplayModule({"val/loss": [-299.0] * 6},
                           {"train/loss": [-300.0, -300.4, -299.7, -300.2, -299.9, -300.1]}), flat, 6)
    d = run_diagnosis(flat)
    assert d.ids[0] == "not_learning" and abs(d.findings[0].evidence["improvement_z"]) < 3
    assert d.findings[0].severity == "critical"


def test_loss_too_noisy_to_judge_is_not_a_critical_not_learning(tmp_path):
    """A diffusion-like loss (random timesteps) scattering 0.6-4.8 around 2.4 cannot show a 2%
    gain over 8 values: the finding stays, at low severity, saying why."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import validation_toys as vt

    train = {"train/loss": [1.8, 3.1, 0.6, 4.8, 3.4, 1.3, 3.3, 2.7]}
    vt.fit(vt.ReplayModule({"val/loss": [2.0] * 8}, train), tmp_path, 8)
    d = run_diagnosis(tmp_path)
    f = next(f for f in d.findings if f.id == "not_learning")
    assert f.severity == "low" and "too noisy" in f.title
    assert f.evidence["resolvable_improvement"] > 0.02 * 1.8


def test_flow_evaluation_json_alone_reveals_inverse_explosion(runs, tmp_path):
    """moltune pt evaluate writes mean_energy_kjmol/{source,target,forward,inverse}; a healthy-
    looking log plus an exploded evaluation is still an inverse explosion."""
    import json
    import shutil

    src = runs("healthy")
    run = tmp_path / "run"
    shutil.copytree(src, run)
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps({"mean_energy_kjmol": {
        "source": -509.0, "target": -468.0, "forward": -460.0, "inverse": 9.0e17},
        "reconstruction_rmsd_nm": 1e-5}))
    d = run_diagnosis(run)
    assert d.ids[0] == "inverse_explosion" and "forward_explosion" not in d.ids
    ev = d.findings[0].evidence
    assert ev["eval/mean_energy_kjmol/inverse_excess_kT"] == pytest.approx((9e17 + 509) / 2.494,
                                                                          rel=1e-5)


def test_slow_decline_of_flow_acceptance_is_not_healthy(tmp_path):
    """0.68 -> 0.57 (16% below the best) is no collapse, but the run is past its best point."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import validation_toys as vt

    val = {"val/loss": [-326.7, -327.2, -327.1, -327.0, -326.9, -326.8], "val/n_samples": [512] * 6,
           "val/acceptance_flow": [0.53, 0.68, 0.66, 0.62, 0.60, 0.57]}  # fmt: skip
    train = {"train/loss": [-327.0, -327.6, -327.9, -328.1, -328.2, -328.3]}
    vt.fit(vt.ReplayModule(val, train), tmp_path / "decline", 6)
    d = run_diagnosis(tmp_path / "decline")
    assert "healthy" not in d.ids and "quality_collapse" not in d.ids
    f = next(f for f in d.findings if f.id == "quality_decline")
    assert f.severity == "medium" and f.evidence["best_epoch"] == 1
    assert f.evidence["relative_drop"] == pytest.approx(1 - 0.57 / 0.68, rel=1e-4)
    # a small wobble below the best is not a decline
    val["val/acceptance_flow"] = [0.53, 0.68, 0.66, 0.67, 0.66, 0.65]
    vt.fit(vt.ReplayModule(val, train), tmp_path / "wobble", 6)
    assert "quality_decline" not in run_diagnosis(tmp_path / "wobble").ids
