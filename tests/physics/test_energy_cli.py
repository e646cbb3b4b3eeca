"""`moltune energy`: round trip against the library, clear errors, atomic outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moltune.cli.main import main
from moltune.physics.energy import TorchEnergy


@pytest.fixture(scope="module")
def energy_cli_inputs(energy_test_system, tmp_path_factory):
    data = energy_test_system("AA")
    d = tmp_path_factory.mktemp("energy_cli")
    pdb = data["peptide"].write_pdb(d / "aa.pdb")
    coords = d / "x.npy"
    np.save(coords, data["x"][:5])
    return data, pdb, coords, d


def test_cli_round_trip_float64_with_forces(energy_cli_inputs, capsys):
    data, pdb, coords, d = energy_cli_inputs
    out, forces = d / "u.npy", d / "f.npy"
    rc = main(["energy", "--pdb", str(pdb), "--coords", str(coords), "--out", str(out),
               "--forces", str(forces)])
    assert rc == 0
    u, f = np.load(out), np.load(forces)
    assert u.shape == (5,) and u.dtype == np.float64 and f.shape == (5, 23, 3)
    # the PDB stores 3 decimals in Angstrom, so compare with the library on the same inputs
    model = TorchEnergy.from_pdb(pdb)
    uu, ff = model.energy_and_forces(torch.tensor(np.load(coords)))
    np.testing.assert_allclose(u, uu.numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(f, ff.numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(u, data["u_ref"][:5], atol=1e-3)  # and with OpenMM
    assert "5 configuration(s)" in capsys.readouterr().out
    assert not list(d.glob(".*.tmp"))  # no temporary files left behind


def test_cli_single_configuration_float32_vacuum_and_openmm_backend(energy_cli_inputs):
    data, pdb, _coords, d = energy_cli_inputs
    single = d / "x1.npy"
    np.save(single, data["x"][0])
    assert main(["energy", "--pdb", str(pdb), "--coords", str(single), "--out",
                 str(d / "u32.npy"), "--dtype", "float32", "--solvent", "vacuum"]) == 0
    u32 = np.load(d / "u32.npy")
    assert u32.shape == () and u32.dtype == np.float32
    assert main(["energy", "--pdb", str(pdb), "--coords", str(single), "--out",
                 str(d / "u_mm.npy"), "--solvent", "vacuum", "--backend", "openmm"]) == 0
    u_mm = np.load(d / "u_mm.npy")
    assert abs(float(u32) - float(u_mm)) < 1e-2
    assert abs(float(u_mm) - data["u_ref"][0]) > 50.0  # vacuum differs from obc2


@pytest.mark.parametrize("problem", ("missing pdb", "missing coords", "atom count", "nan", "junk"))
def test_cli_errors_are_one_line_exit_2(energy_cli_inputs, problem, capsys):
    data, pdb, coords, d = energy_cli_inputs
    bad = d / f"bad_{problem.replace(' ', '_')}.npy"
    args = {"pdb": str(pdb), "coords": str(coords)}
    expect = ""
    if problem == "missing pdb":
        args["pdb"], expect = str(d / "nope.pdb"), "not found"
    elif problem == "missing coords":
        args["coords"], expect = str(d / "nope.npy"), "not found"
    elif problem == "atom count":
        np.save(bad, data["x"][:2, :22])
        args["coords"], expect = str(bad), "23 atoms"
    elif problem == "nan":
        x = data["x"][:2].copy()
        x[0, 3, 1] = np.nan
        np.save(bad, x)
        args["coords"], expect = str(bad), "NaN"
    else:
        bad.write_text("not an array")
        args["coords"], expect = str(bad), "cannot read"
    out = d / f"u_{problem.replace(' ', '_')}.npy"
    rc = main(["energy", "--pdb", args["pdb"], "--coords", args["coords"], "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert expect in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
