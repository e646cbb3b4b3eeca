"""`moltune runs ...` end to end through the command's entry point."""

from __future__ import annotations

import json

from moltune.cli.main import main


def test_diagnose_cli_on_stopped_run(runs, tmp_path, capsys):
    run = runs("explode")
    out = tmp_path / "diag"
    assert main(["runs", "diagnose", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("[critical] inverse_explosion:")
    data = json.loads((out / "diagnosis.json").read_text())
    assert data[0]["id"] == "inverse_explosion"
    stopped = next(f for f in data if f["id"] == "stopped_by_monitor")
    assert stopped["evidence"]["monitor"] == "energy_explosion"
    assert (out / "plots" / "diagnosis_energies.png").exists()


def test_diagnose_cli_threshold_flags(runs, tmp_path):
    run = runs("ligand_one_sample")
    assert main(["runs", "diagnose", str(run), "--out", str(tmp_path), "--min-val-samples", "1"]) == 0
    data = json.loads((tmp_path / "diagnosis.json").read_text())
    small = next(f for f in data if f["id"] == "small_validation")
    assert "1 validation sample" not in small["title"]  # size no longer counts; volatility does
    assert "swings" in small["title"]


def test_missing_run_is_a_clean_error(capsys):
    assert main(["runs", "diagnose", "/nonexistent/run"]) == 2
    err = capsys.readouterr().err
    assert "no such run folder" in err and err.count("\n") == 1


def test_compare_needs_two(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.csv").write_text("epoch,step,val/loss\n0,0,1.0\n")
    assert main(["runs", "compare", str(tmp_path / "r"), "--metric", "val/loss",
                 "--out", str(tmp_path / "o")]) == 2


def _strict(path):
    def refuse(const):
        raise ValueError(f"{path}: non-standard JSON constant {const}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_outputs_are_strict_json_even_for_a_nan_run(runs, tmp_path):
    """The transport run has NaN validation: every JSON file must still parse strictly."""
    run = runs("transport")
    assert main(["runs", "diagnose", str(run), "--out", str(tmp_path)]) == 0
    assert main(["runs", "overfitting", str(run), "--out", str(tmp_path)]) == 0
    data = _strict(tmp_path / "overfitting.json")
    assert "nan" in [r["val"] for r in data["ratio_series"]]
    _strict(tmp_path / "diagnosis.json")
    stopped = runs("explode")
    for name in ("stopped.json", "redflags.json"):
        _strict(stopped / name)
