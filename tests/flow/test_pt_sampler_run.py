"""``moltune pt sample`` refuses a skip period below one swap event before it touches anything."""

from __future__ import annotations

import pytest

from moltune.cli.main import main


@pytest.mark.parametrize("every", ["0", "-3"])
def test_skip_every_below_one_is_refused(every, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["pt", "sample", "--peptide", "AA", "--temperatures", "300", "450", "--flow",
            "identity", "--skip-every", every, "--time-ns", "0.001", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--skip-every" in err[0] and every in err[0]
    assert not out.exists()
