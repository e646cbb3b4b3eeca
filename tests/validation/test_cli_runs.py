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


def _tiny_run(path):
    path.mkdir(parents=True, exist_ok=True)
    rows = ["epoch,step,train_loss,val_loss"]
    for e, (t, v) in enumerate([(1.0, 1.1), (0.6, 0.7), (0.4, 0.5), (0.3, 0.6), (0.2, 0.8)]):
        rows += [f"{e},{e},{t},", f"{e},{e},,{v}"]
    (path / "metrics.csv").write_text("\n".join(rows) + "\n")
    return path


def _one_line_exit_2(argv, capsys, expect):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and expect in err, err


def test_lightning_names_are_understood_end_to_end(tmp_path, capsys):
    """The issue's example: a CSVLogger run with train_loss / val_loss that overfits."""
    run = _tiny_run(tmp_path / "run")
    assert main(["runs", "diagnose", str(run)]) == 0
    assert capsys.readouterr().out.startswith("[high] overfitting:")
    assert main(["runs", "overfitting", str(run)]) == 0
    data = json.loads((run / "overfitting.json").read_text())
    assert data["recommended_epoch"] == 2 and data["columns"]["val_loss"] == "val_loss"


def test_refused_numbers_change_nothing(tmp_path, capsys):
    run = _tiny_run(tmp_path / "run")
    _one_line_exit_2(["runs", "diagnose", str(run), "--explosion-kT", "nan"], capsys, "finite")
    _one_line_exit_2(["runs", "overfitting", str(run), "--threshold", "nan"], capsys, "finite")
    _one_line_exit_2(["runs", "compare", str(run), str(run), "--metric", "val_loss", "--alpha",
                      "2", "--out", str(tmp_path / "c")], capsys, "(0, 1)")
    _one_line_exit_2(["runs", "compare", str(run), str(run), "--metric", "val_loss", "--alpha",
                      "nan", "--out", str(tmp_path / "c")], capsys, "(0, 1)")
    assert sorted(p.name for p in run.iterdir()) == ["metrics.csv"]
    assert not (tmp_path / "c").exists()


def test_output_path_problems_are_one_line(tmp_path, capsys):
    import os

    run = _tiny_run(tmp_path / "run")
    (tmp_path / "afile").write_text("x")
    _one_line_exit_2(["runs", "diagnose", str(run), "--out", str(tmp_path / "afile")], capsys,
                     "is a file; give a folder")
    _one_line_exit_2(["runs", "compare", str(run), str(run), "--metric", "val_loss", "--out",
                      str(tmp_path / "afile")], capsys, "is a file; give a folder")
    (run / "overfitting.json").mkdir()
    _one_line_exit_2(["runs", "overfitting", str(run)], capsys, "is a folder; give a file path")
    (run / "overfitting.json").rmdir()
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            _one_line_exit_2(["runs", "diagnose", str(run), "--out", str(ro / "d")], capsys,
                             "not writable")
        finally:
            ro.chmod(0o755)


def test_binary_metrics_csv_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_bytes(bytes(range(256)) * 4)
    _one_line_exit_2(["runs", "diagnose", str(run)], capsys, "metrics.csv")
    _one_line_exit_2(["runs", "overfitting", str(run)], capsys, "metrics.csv")
    _one_line_exit_2(["runs", "compare", str(run), str(run), "--metric", "val_loss", "--out",
                      str(tmp_path / "c")], capsys, "metrics.csv")
    (run / "metrics.csv").write_bytes(b"epoch,step,val_loss\n0,0,\x001.0\n")
    _one_line_exit_2(["runs", "diagnose", str(run)], capsys, "metrics.csv")


def test_compare_reads_lightning_names(tmp_path):
    for i, last in enumerate([0.8, 0.82, 0.79]):
        run = _tiny_run(tmp_path / "a" / f"seed{i}")
        text = (run / "metrics.csv").read_text().replace(",0.8\n", f",{last}\n")
        (run / "metrics.csv").write_text(text)
    for i in range(3):
        _tiny_run(tmp_path / "b" / f"seed{i}")
    assert main(["runs", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--metric",
                 "val_loss", "--out", str(tmp_path / "c")]) == 0
    groups = (tmp_path / "c" / "groups.csv").read_text()
    assert "0.8 0.82 0.79" in groups
