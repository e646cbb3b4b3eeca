"""Flow evaluation end to end: a small AA data folder simulated here (OpenMM Langevin at 300 and
450 K, written in the ``moltune pt simulate`` layout), the identity flow, a broken flow, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from moltune.flow.evaluate import METRIC_KEYS, evaluate_flow, evaluate_transport, render_report
from moltune.flow.models import IdentityFlow
from moltune.physics.units import beta

TEMPS = (300.0, 450.0)
N_FRAMES = 120


def _simulate(peptide, temp: float, n_frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Langevin frames [F, N, 3] nm (float32) and their OpenMM energies (kJ/mol)."""
    import openmm
    import openmm.unit as u

    from moltune.physics.forcefield import create_system

    system = create_system(peptide.topology, solvent="obc2")
    integ = openmm.LangevinMiddleIntegrator(temp * u.kelvin, 10 / u.picosecond, 1 * u.femtosecond)
    integ.setRandomNumberSeed(seed)
    cpu = openmm.Platform.getPlatformByName("CPU")
    ctx = openmm.Context(system, integ, cpu, {"Threads": "1"})
    ctx.setPositions(peptide.positions_nm)
    ctx.setVelocitiesToTemperature(temp * u.kelvin, seed)
    integ.step(1000)
    xyz, energy = [], []
    for _ in range(n_frames):
        integ.step(30)
        st = ctx.getState(getPositions=True, getEnergy=True)
        xyz.append(st.getPositions(asNumpy=True).value_in_unit(u.nanometer))
        energy.append(st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole))
    return np.asarray(xyz, np.float32), np.asarray(energy)


@pytest.fixture(scope="module")
def aa_data_dir(tmp_path_factory, aa_peptide):
    """A tiny PT data folder (two temperatures, independent Langevin runs)."""
    d = tmp_path_factory.mktemp("aa_pt")
    aa_peptide.write_pdb(d / "topology.pdb")
    runs = [_simulate(aa_peptide, t, N_FRAMES, seed=11 + k) for k, t in enumerate(TEMPS)]
    k = len(TEMPS)
    np.savez(
        d / "pt_data.npz",
        temperatures_K=np.asarray(TEMPS),
        xyz_nm=np.stack([r[0] for r in runs]),
        energy_kjmol=np.stack([r[1] for r in runs]),
        replica_index=np.tile(np.arange(k, dtype=np.int32)[:, None], (1, N_FRAMES)),
        time_ps=0.03 * np.arange(1, N_FRAMES + 1),
        swap_attempts=np.zeros(k - 1, np.int64),
        swap_accepts=np.zeros(k - 1, np.int64),
        swap_time_ps=np.zeros(0),
        swap_accepted=np.zeros((0, k - 1), np.int8),
    )
    meta = {"temperatures_K": list(TEMPS), "solvent": "obc2", "n_frames": N_FRAMES}
    (d / "metadata.json").write_text(json.dumps(meta))
    return d


class _BrokenForward(torch.nn.Module):
    """Scale map T(x) = s x whose forward direction returns NaN for every 4th frame."""

    def __init__(self, s: float):
        super().__init__()
        self.s = s

    def forward(self, x, t_s, t_t):
        y = self.s * x
        y[::4] = float("nan")
        return y, torch.full((x.shape[0],), x[0].numel() * math.log(self.s), dtype=x.dtype)

    def inverse(self, y, t_s, t_t):
        return y / self.s, torch.full(
            (y.shape[0],), -y[0].numel() * math.log(self.s), dtype=y.dtype
        )


def _harmonic(x: torch.Tensor) -> torch.Tensor:
    return 250.0 * (x * x).sum(dim=(-1, -2))  # U = k|x|^2/2, k = 500 kJ/mol/nm^2


def test_identity_end_to_end(aa_data_dir, tmp_path):
    out = tmp_path / "eval"
    m = evaluate_flow(
        IdentityFlow(),
        aa_data_dir,
        (0, 1),
        out,
        n_pairs=10_000,
        n_boot=200,
        label="identity",
        progress=False,
    )
    saved = json.loads((out / "metrics.json").read_text())
    assert tuple(saved) == METRIC_KEYS
    # the identity flow is the naive swap, exactly
    assert m["acceptance_flow"] == m["acceptance_naive"]
    acc = m["acceptance_naive"]
    assert acc["n_pairs"] == 10_000
    assert acc["ci95"][0] < acc["mean"] < acc["ci95"][1]
    assert 0.01 < acc["mean"] < 0.4
    # Jeffreys of the identity: (b_i - b_j)(<U>_j - <U>_i), from the stored OpenMM energies
    e = np.load(aa_data_dir / "pt_data.npz")["energy_kjmol"]
    expected = (beta(300.0) - beta(450.0)) * (e[1].mean() - e[0].mean())
    assert m["jeffreys_kt"] == pytest.approx(expected, rel=1e-3, abs=1e-3)
    assert 1.0 < m["jeffreys_kt"] < 12.0
    me = m["mean_energy_kjmol"]
    assert me["forward"] == me["source"] and me["inverse"] == me["target"]
    assert me["source"] == pytest.approx(e[0].mean(), abs=1e-2)
    assert m["nonfinite_fraction"] == 0.0
    assert m["reconstruction_rmsd_nm"] == 0.0
    assert 0.0 < m["ess_forward"] < 1.0 and 0.0 < m["ess_inverse"] < 1.0
    # identity: T(source) compared with the target is the source against the target
    assert m["ramachandran_js"]["forward"] == pytest.approx(m["ramachandran_js"]["inverse"])
    assert 0.08 < m["min_distance_nm"]["forward"] < 0.2
    for f in (
        "ramachandran.png",
        "energy_histograms_forward.png",
        "energy_histograms_inverse.png",
        "report.md",
        "details.json",
        "per_frame.npz",
    ):
        assert (out / f).is_file(), f
    report = (out / "report.md").read_text()
    assert "identity" in report and "does not work" in report
    assert "Round-trip RMSD" in report and "invertible" in report


def test_broken_forward_direction_is_named(tmp_path):
    """Harmonic wells with an optimal scale map whose forward pass breaks on 1 frame in 4."""
    t_i, t_j = TEMPS
    rng = np.random.default_rng(0)
    kb = 1 / (beta(1.0))
    x = rng.normal(0, math.sqrt(kb * t_i / 500.0), (400, 3, 3))
    y = rng.normal(0, math.sqrt(kb * t_j / 500.0), (400, 3, 3))
    flow = _BrokenForward(math.sqrt(t_j / t_i))
    m, details, _ = evaluate_transport(
        flow, _harmonic, x, y, t_i, t_j, n_pairs=5000, n_boot=100, progress=False
    )
    assert m["nonfinite_fraction"] == pytest.approx(100 / 800)
    assert details["nonfinite"] == {"forward": 100, "inverse": 0}
    # the broken quarter is rejected; the rest of the swaps are exact (acceptance 1)
    assert m["acceptance_flow"]["mean"] == pytest.approx(0.75, abs=0.03)
    assert m["ess_inverse"] == pytest.approx(1.0)
    assert m["jeffreys_kt"] == math.inf
    assert m["reconstruction_rmsd_nm"] < 1e-12
    report = render_report(m, details)
    assert "helps but is not faithful" in report
    assert "forward (300 K -> 450 K) direction fails" in report
    assert "Inverse (450 K -> 300 K) passes" in report
    assert "100 of 400 transformed frames are non-finite" in report


def test_perfect_map_reports_working_transport():
    t_i, t_j = TEMPS
    rng = np.random.default_rng(1)
    kb = 1 / (beta(1.0))
    x = rng.normal(0, math.sqrt(kb * t_i / 500.0), (500, 4, 3))
    y = rng.normal(0, math.sqrt(kb * t_j / 500.0), (500, 4, 3))

    class _Scale(_BrokenForward):
        def forward(self, x, t_s, t_t):
            return self.s * x, torch.full(
                (x.shape[0],), x[0].numel() * math.log(self.s), dtype=x.dtype
            )

    m, details, _ = evaluate_transport(
        _Scale(math.sqrt(t_j / t_i)),
        _harmonic,
        x,
        y,
        t_i,
        t_j,
        n_pairs=5000,
        n_boot=100,
        progress=False,
    )
    assert m["acceptance_flow"]["mean"] == pytest.approx(1.0, abs=1e-12)
    assert m["acceptance_naive"]["ci95"][1] < 0.8
    assert m["jeffreys_kt"] == pytest.approx(0.0, abs=1e-9)
    assert "**The transport works.**" in render_report(m, details)


def test_bad_pair_and_cli(aa_data_dir, tmp_path, capsys):
    from moltune.cli.main import main
    from moltune.common.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="pair"):
        evaluate_flow(IdentityFlow(), aa_data_dir, (0, 5), tmp_path / "x", progress=False)
    out = tmp_path / "cli"
    rc = main(
        [
            "pt",
            "evaluate",
            "--identity",
            "--data",
            str(aa_data_dir),
            "--out",
            str(out),
            "--n-pairs",
            "2000",
            "--n-boot",
            "50",
        ]
    )
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["acceptance_flow"] == m["acceptance_naive"]
    assert m["acceptance_naive"]["n_pairs"] == 2000
    assert main(["pt", "evaluate", "--data", str(aa_data_dir), "--out", str(out)]) == 2
    assert "--identity" in capsys.readouterr().err


def test_real_flow_metrics_agree_with_direct_swaps(aa_data_dir, perturb):
    """A perturbed baseline flow: per-frame works reproduce the swap D computed pair by pair."""
    from moltune.flow.models import make_flow
    from moltune.flow.swaps import propose_flow_swap
    from moltune.physics.energy import TorchEnergy
    from moltune.physics.ptdata import load_pt_data

    data = load_pt_data(aa_data_dir)
    energy = TorchEnergy.from_pdb(data.topology_pdb)
    flow = make_flow("baseline_ic", data.topology)
    flow.representation.fit(data.xyz_nm[0])
    perturb(flow.core, scale=0.05)
    x, y = data.xyz_nm
    m, _, arrays = evaluate_transport(
        flow, energy, x, y, *TEMPS, n_pairs=3000, n_boot=100, progress=False
    )
    assert m["nonfinite_fraction"] == 0.0
    assert m["reconstruction_rmsd_nm"] < 1e-8
    assert m["acceptance_flow"]["mean"] != m["acceptance_naive"]["mean"]
    a, b = arrays["pair_source"][:40], arrays["pair_target"][:40]
    xs, ys = (torch.as_tensor(v, dtype=torch.float64) for v in (x[a], y[b]))
    prop = propose_flow_swap(flow, energy, xs, ys, *TEMPS, beta(TEMPS[0]), beta(TEMPS[1]))
    d = -(arrays["work_forward_kt"][a] + arrays["work_inverse_kt"][b])
    np.testing.assert_allclose(prop.log_alpha, d, rtol=0, atol=1e-6)
    assert m["jeffreys_kt"] == pytest.approx(
        np.mean(arrays["work_forward_kt"]) + np.mean(arrays["work_inverse_kt"])
    )
