"""PT data on disk: combining several runs of one system for training."""

import numpy as np
import pytest

from moltune.common.errors import InvalidInputError
from moltune.physics.ptdata import combine_pt_data, load_pt_data
from moltune.physics.replica_exchange import PTConfig, simulate

TEMPS = [300.0, 450.0, 670.0, 1000.0]
TINY = {"time_ns": 0.002, "save_interval_ps": 0.2, "swap_interval_ps": 0.1,
        "equilibration_ps": 0.2, "checkpoint_interval_ps": 1.0}  # fmt: skip


def _run(aa, path, temps=TEMPS, seed=3):
    cfg = PTConfig(temperatures_K=temps, seed=seed, **TINY)
    return load_pt_data(simulate(aa, path, cfg, progress=False)["out"])


def test_combine_runs_concatenates_per_temperature(aa, tmp_path):
    a, b = _run(aa, tmp_path / "a"), _run(aa, tmp_path / "b", seed=7)
    ab = combine_pt_data([a, b])
    for k in range(4):
        assert ab.xyz_nm[k].shape == (20, 23, 3)
        np.testing.assert_array_equal(ab.xyz_nm[k][:10], a.xyz_nm[k])
        np.testing.assert_array_equal(ab.xyz_nm[k][10:], b.xyz_nm[k])
        np.testing.assert_array_equal(ab.energy_kjmol[k][10:], b.energy_kjmol[k])
    assert not np.array_equal(a.xyz_nm[0], b.xyz_nm[0])  # two independent runs
    assert ab.swap_attempts.tolist() == [20, 20, 20]
    assert ab.metadata["combined_from"] == [str(tmp_path / "a"), str(tmp_path / "b")]
    with pytest.raises(InvalidInputError, match="temperatures"):
        combine_pt_data([a, _run(aa, tmp_path / "c", temps=TEMPS[:3])])
    with pytest.raises(InvalidInputError, match="no PT runs"):
        combine_pt_data([])


def test_training_config_takes_several_runs(aa, tmp_path):
    from moltune.flow.train import load_pt_runs

    _run(aa, tmp_path / "a")
    _run(aa, tmp_path / "b", seed=7)
    data = load_pt_runs([str(tmp_path / "a"), str(tmp_path / "b")], "training data")
    assert data.xyz_nm[0].shape[0] == 20
    assert load_pt_runs(str(tmp_path / "a"), "training data").xyz_nm[0].shape[0] == 10
