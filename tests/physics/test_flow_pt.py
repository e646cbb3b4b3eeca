"""Flow-enhanced PT on OpenMM replicas (moltune.flow.pt_sampler).

The identity flow must reproduce the plain swap's acceptance on the same states (also inside a
run, against the OpenMM energies plain PT would use);
the round-trip counter and the walker-history rebuild on hand-made trajectories; a tiny
`moltune pt sample` with an untrained TarFlow (the identity at initialisation) that writes its
files and resumes. (Time-series statistics: test_timeseries.py.)
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from moltune.common.errors import InvalidInputError, UserError
from moltune.flow.models import IdentityFlow
from moltune.flow.pt_sampler import (
    KIND_FLOW,
    FlowSwapMove,
    count_round_trips,
    plan_swaps,
    read_records,
    sample,
    walker_history,
)
from moltune.physics.peptide import build_peptide
from moltune.physics.ptdata import load_pt_data
from moltune.physics.replica_exchange import PTConfig, swap_log_acceptance
from moltune.physics.units import beta

TEMPS3 = [300.0, 450.0, 670.0]
TINY = {"time_ns": 0.004, "save_interval_ps": 0.1, "swap_interval_ps": 0.1,
        "equilibration_ps": 0.5, "checkpoint_interval_ps": 1.0, "seed": 5}  # fmt: skip


@pytest.fixture(scope="module")
def plain_run(aa, tmp_path_factory):
    out = tmp_path_factory.mktemp("flowpt") / "plain"
    sample(aa, out, PTConfig(temperatures_K=TEMPS3, **TINY), progress=False)
    return out


# ----------------------------------------------------------------------------- round trips
def test_round_trip_counter_on_hand_made_trajectory():
    # walker at temperature k (columns: 300, 450, 670 K), one row per swap event
    hist = np.array([
        [0, 1, 2],  # walker 0 starts at the bottom
        [1, 0, 2],  # walker 1 at the bottom
        [1, 2, 0],  # walker 0 reaches the top
        [2, 1, 0],  # walker 2 reaches the bottom (it started at the top: no trip yet)
        [2, 0, 1],  # walker 1 reaches the top
        [0, 2, 1],  # walker 0 back at the bottom: trip 1 (walker 0)
        [0, 1, 2],  # walker 2 at the top after the bottom
        [1, 0, 2],  # walker 1 back at the bottom: trip 1 (walker 1)
        [2, 0, 1],  # walker 2 back at the bottom: trip 1 (walker 2)
        [2, 1, 0],  # walker 0 at the top again
        [0, 1, 2],  # walker 0 at the bottom again: trip 2 (walker 0)
    ])  # fmt: skip
    np.testing.assert_array_equal(count_round_trips(hist), [2, 1, 1])
    assert count_round_trips(hist[:5]).sum() == 0
    np.testing.assert_array_equal(count_round_trips(hist[:7]), [1, 0, 0])
    # two replicas: every accepted swap moves both walkers between the ends
    two = np.array([[0, 1], [1, 0], [0, 1], [1, 0], [0, 1]])
    np.testing.assert_array_equal(count_round_trips(two), [2, 1])


def test_walker_history_rebuilds_events_around_the_first_frame():
    # events at 0.1..0.5 ps; the first frame (0.3 ps) precedes the swap of its own step
    times = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    acc = np.array([[1, -1], [-1, 1], [0, -1], [-1, 1], [1, -1]], np.int8)
    # start [0,1,2] -> e0 swap(0,1) [1,0,2] -> e1 swap(1,2) [1,2,0] = walkers of the first frame
    hist = walker_history(np.array([1, 2, 0]), 0.3, times, acc)
    np.testing.assert_array_equal(hist, [[1, 0, 2], [1, 2, 0], [1, 2, 0], [1, 0, 2], [0, 1, 2]])
    skips = {"time_ps": np.array([0.3]), "i": np.array([0]), "j": np.array([2]),
             "accepted": np.array([1])}  # fmt: skip
    hist = walker_history(np.array([1, 2, 0]), 0.3, times, acc, skips)
    np.testing.assert_array_equal(hist[2:], [[0, 2, 1], [0, 1, 2], [1, 0, 2]])


def test_walker_history_matches_every_saved_frame_of_a_real_run(plain_run):
    data = load_pt_data(plain_run)
    assert data.swap_accepts.sum() > 0  # there is something to rebuild
    first = np.array([r[0] for r in data.replica_index])
    hist = walker_history(first, data.time_ps[0], data.swap_time_ps, data.swap_accepted)
    for f, t in enumerate(data.time_ps):
        before = np.nonzero(data.swap_time_ps < t - 1e-9)[0]
        expect = hist[before[-1]] if before.size else None
        if expect is not None:
            np.testing.assert_array_equal([r[f] for r in data.replica_index], expect)


# ----------------------------------------------------------------------- swap plan and move
def test_plan_swaps():
    ladder = {"temperatures_K": [300.0, 450.0, 670.0, 1000.0], "pairs": [[0, 1], [1, 2], [2, 3]]}
    single = {"temperatures_K": [300.0, 450.0], "pairs": [[0, 1]]}
    t4 = [300.0, 450.0, 670.0, 1000.0]
    assert plan_swaps(t4, ladder, [(0, 3)]) == {(0, 1): "trained", (1, 2): "trained",
                                                (2, 3): "trained", (0, 3): "conditional"}  # fmt: skip
    assert plan_swaps(t4, single) == {(0, 1): "trained", (1, 2): "plain", (2, 3): "plain"}
    assert plan_swaps([300.0, 1000.0], single)[(0, 1)] == "plain"
    assert plan_swaps(t4, None, [(1, 3)])[(1, 3)] == "any"
    with pytest.raises(UserError, match="not trained for the skip"):
        plan_swaps(t4, single, [(0, 3)])
    with pytest.raises(InvalidInputError):
        plan_swaps(t4, ladder, [(0, 1)])


def _md_states(aa, n: int, seed: int = 0) -> np.ndarray:
    """[n, K, N, 3] nm: short Langevin MD at each temperature of TEMPS3 from the built AA."""
    import openmm

    from moltune.physics.forcefield import create_system

    system = create_system(aa.topology)
    out = np.zeros((n, len(TEMPS3), aa.n_atoms, 3))
    for k, t in enumerate(TEMPS3):
        integ = openmm.LangevinMiddleIntegrator(t, 5.0, 0.001)
        integ.setRandomNumberSeed(seed + k + 1)
        ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("CPU"),
                             {"Threads": "1"})  # fmt: skip
        ctx.setPositions(aa.positions_nm)
        ctx.setVelocitiesToTemperature(t, seed + k + 1)
        integ.step(500)
        for f in range(n):
            integ.step(100)
            out[f, k] = ctx.getState(getPositions=True).getPositions(asNumpy=True)._value
    return out


def test_identity_flow_acceptance_equals_naive_on_the_same_states(aa):
    from moltune.physics.energy import TorchEnergy
    from moltune.physics.openmm_energy import OpenMMEnergy

    states = _md_states(aa, 12)
    energy = TorchEnergy.from_topology(aa.topology).double()
    move = FlowSwapMove(IdentityFlow(), energy.energy, TEMPS3, plan_swaps(TEMPS3, None),
                        np.ones(aa.n_atoms), n_eq_steps=0, dt_ps=0.001)  # fmt: skip
    omm = OpenMMEnergy(aa.topology, solvent="obc2")
    b = [beta(t) for t in TEMPS3]
    d_flow, d_naive = [], []
    for pos in states:
        prop = move._propose(pos, [(0, 1), (1, 2)])
        u = omm(torch.as_tensor(pos)).detach().numpy()  # OpenMM energies, as plain PT uses
        d_flow += list(prop.log_alpha)
        d_naive += [swap_log_acceptance(b[0], b[1], u[0], u[1]),
                    swap_log_acceptance(b[1], b[2], u[1], u[2])]  # fmt: skip
        np.testing.assert_array_equal(prop.nonfinite, False)
        # identity: the plain exchange, T(x) -> temperature j and T^-1(y) -> temperature i
        np.testing.assert_array_equal(prop.y_to_j.numpy(), pos[[0, 1]])
        np.testing.assert_array_equal(prop.x_to_i.numpy(), pos[[1, 2]])
    d_flow, d_naive = np.array(d_flow), np.array(d_naive)
    assert np.ptp(d_naive) > 1.0  # states with very different acceptances
    np.testing.assert_allclose(d_flow, d_naive, atol=2e-3, rtol=0)  # TorchEnergy vs OpenMM
    # with equal uniforms the decisions agree (none lies within 2e-3 of a threshold here)
    uni = np.random.default_rng(0).random(d_flow.size)
    np.testing.assert_array_equal(uni < np.exp(np.minimum(d_flow, 0)),
                                  uni < np.exp(np.minimum(d_naive, 0)))  # fmt: skip
    assert move.buf.flow_calls == 2 * len(states)


@pytest.mark.parametrize("velocities", ["keep", "redraw", "harmonic"])
def test_velocities_after_an_accepted_flow_swap(aa, velocities):
    """'keep': positions move, each temperature keeps its velocities; 'redraw', 'harmonic': new ones."""
    from types import SimpleNamespace

    from moltune.physics.energy import TorchEnergy

    class Replicas:  # the ReplicaSet interface the move uses
        def __init__(self, pos, vel):
            self.pos, self.vel, self.updates = pos, vel, {}

        def get_states(self):
            return self.pos.copy(), self.vel.copy()

        def set_states(self, updates):
            self.updates = updates

    k = len(TEMPS3)
    pos = np.repeat(aa.positions_nm[None], k, axis=0)  # equal states: D = 0, always accepted
    vel = np.random.default_rng(1).standard_normal(pos.shape)
    energy = TorchEnergy.from_topology(aa.topology).double()
    move = FlowSwapMove(IdentityFlow(), energy.energy, TEMPS3, plan_swaps(TEMPS3, None),
                        np.ones(aa.n_atoms), n_eq_steps=0, dt_ps=0.001,
                        velocities=velocities)  # fmt: skip
    state = SimpleNamespace(step=0, swap_events=0, rng=np.random.default_rng(0),
                            walkers=np.arange(k))  # fmt: skip
    reps = Replicas(pos, vel)
    accepted = move(reps, state, np.asarray(TEMPS3), np.array([beta(t) for t in TEMPS3]),
                    np.zeros(k))  # fmt: skip
    assert accepted.tolist() == [1, -1]  # event 0 tries pair (0, 1)
    assert sorted(reps.updates) == [0, 1]
    for s, (_, v) in reps.updates.items():
        assert (np.array_equal(v, vel[s])) == (velocities == "keep")
    with pytest.raises(InvalidInputError, match="velocities"):
        FlowSwapMove(IdentityFlow(), energy.energy, TEMPS3, plan_swaps(TEMPS3, None),
                     np.ones(aa.n_atoms), n_eq_steps=0, dt_ps=0.001, velocities="hot")


def test_identity_flow_run_records_the_naive_acceptance(aa, tmp_path):
    """Every swap of a run through the identity flow has D = (b_i - b_j)(U_i - U_j) on the OpenMM
    energies of the frames saved at that step (saved every swap, before it)."""
    sample(aa, tmp_path / "id", PTConfig(temperatures_K=TEMPS3, **TINY), flow=IdentityFlow(),
           progress=False)  # fmt: skip
    data = load_pt_data(tmp_path / "id")
    rec = read_records(tmp_path / "id")
    assert (rec["kind"] == KIND_FLOW).all() and len(rec["kind"]) == (data.swap_accepted >= 0).sum()
    np.testing.assert_array_equal(rec["accepted"], data.swap_accepted[data.swap_accepted >= 0])
    frame = np.searchsorted(data.time_ps, rec["time_ps"] - 1e-9)
    np.testing.assert_allclose(data.time_ps[frame], rec["time_ps"], atol=1e-9)
    b = [beta(t) for t in TEMPS3]
    naive = [
        swap_log_acceptance(b[i], b[j], data.energy_kjmol[i][f], data.energy_kjmol[j][f])
        for i, j, f in zip(rec["i"], rec["j"], frame)
    ]
    np.testing.assert_allclose(rec["log_alpha"], naive, atol=2e-3, rtol=0)
    assert np.ptp(naive) > 1.0  # swaps of very different acceptance were compared


# ------------------------------------------------------------------------------- end to end
def _untrained_tarflow_run(pt_dir, run_dir) -> None:
    """A checkpoint in `moltune pt train`'s layout holding an untrained TarFlow (the identity)."""
    from moltune.common.io import torch_save
    from moltune.flow.checkpoint import flow_metadata
    from moltune.flow.train import DataConfig, FlowConfig, TrainConfig, build_flow

    data = load_pt_data(pt_dir)
    cfg = TrainConfig(flow=FlowConfig(name="tarflow", n_blocks=1, d_model=16, n_heads=2),
                      data=DataConfig(train_dir=str(pt_dir), test_dir=None))  # fmt: skip
    flow = build_flow(cfg.flow, data.topology)
    flow.representation.fit(np.concatenate(data.xyz_nm))
    meta = flow_metadata(cfg, data, [(0, 1), (1, 2)])
    state = {f"flow.{k}": v for k, v in flow.state_dict().items()}
    torch_save(run_dir / "checkpoints" / "last.ckpt",
               {"hyper_parameters": {"moltune": meta}, "state_dict": state, "global_step": 0,
                "epoch": 0})  # fmt: skip


def test_pt_sample_cli_with_a_flow_writes_files_and_resumes(aa, plain_run, tmp_path):
    run = tmp_path / "flowrun"
    _untrained_tarflow_run(plain_run, run)
    out = tmp_path / "sample"
    base = [sys.executable, "-m", "moltune.cli.main", "pt", "sample", "--peptide", "AA",
            "--temperatures", *map(str, TEMPS3), "--flow", str(run), "--skip", "0", "2",
            "--save-interval-ps", "0.1", "--equilibration-ps", "0.5",
            "--checkpoint-interval-ps", "1.0", "--seed", "5", "--no-progress", "--out", str(out)]  # fmt: skip
    r = subprocess.run(base + ["--time-ns", "0.002"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "round trips" in r.stdout
    for name in ("topology.pdb", "metadata.json", "pt_data.npz", "state.npz", "sampler.json",
                 "sampler_stats.json", "plots/sampler.png", "chunks/flowswap_000000.npz"):  # fmt: skip
        assert (out / name).is_file(), name
    stats = json.loads((out / "sampler_stats.json").read_text())
    assert set(stats["pairs"]) == {"0-1", "1-2", "0-2"}
    assert stats["pairs"]["0-1"]["swap"] == "trained" and stats["pairs"]["0-2"]["swap"] == "skip"
    assert stats["pairs"]["0-2"]["attempts"] == 20  # one skip per swap event, 2 ps / 0.1 ps
    assert stats["flow_calls"] > 0 and 0 < stats["flow_cpu_s"] < stats["cpu_s"]
    assert stats["nonfinite_proposals"] == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert "T^-1(y)" in meta["sampler"]["swap_scheme"]
    # extend (the resume path): frames continue without gaps or duplicates
    r = subprocess.run(base + ["--time-ns", "0.004"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    data = load_pt_data(out)
    np.testing.assert_allclose(data.time_ps, 0.1 * np.arange(1, 41), atol=1e-9)
    rec = read_records(out)
    assert len(rec["kind"]) == (data.swap_accepted >= 0).sum() + 40  # neighbours + skips
    assert np.all(np.diff(rec["event"]) >= 0)
    # the untrained TarFlow is the identity: its swaps are the naive ones (skip barely accepted)
    stats = json.loads((out / "sampler_stats.json").read_text())
    assert stats["pairs"]["0-2"]["mean_log_acceptance"] < -2
    # another flow (or none) cannot resume this run
    with pytest.raises(UserError, match="another flow"):
        sample(aa, out, PTConfig(temperatures_K=TEMPS3, **{**TINY, "time_ns": 0.004}),
               progress=False)  # fmt: skip


def test_interrupted_flow_run_resumes(aa, tmp_path):
    from moltune.flow.models import make_flow

    torch.manual_seed(0)
    flow = make_flow("baseline_ic", aa.topology)
    with torch.no_grad():  # a genuine (non-identity) map, so velocities are redrawn on accepts
        for p in flow.parameters():
            p.add_(0.005 * torch.randn_like(p))
    close = [300.0, 320.0, 340.0]  # close temperatures: many accepted swaps to redraw after
    cfg = PTConfig(temperatures_K=close, **TINY)
    sample(aa, tmp_path / "a", cfg, flow=flow, progress=False)
    sample(aa, tmp_path / "b", cfg, flow=flow, progress=False, stop_after_chunks=2)
    assert not json.loads((tmp_path / "b" / "sampler.json").read_text())["segments"][-1]["complete"]
    sample(aa, tmp_path / "b", cfg, flow=flow, progress=False)
    a, b = load_pt_data(tmp_path / "a"), load_pt_data(tmp_path / "b")
    np.testing.assert_array_equal(a.swap_accepted, b.swap_accepted)
    assert a.swap_accepts.sum() > 0
    # the context checkpoints restore the trajectory up to round-off (as in plain PT), which the
    # dynamics then amplify slowly: identical early, close to 1e-3 nm by the end of 4 ps
    for k in range(len(close)):
        np.testing.assert_allclose(a.xyz_nm[k][:20], b.xyz_nm[k][:20], atol=1e-5, rtol=0)
        np.testing.assert_allclose(a.xyz_nm[k], b.xyz_nm[k], atol=1e-3, rtol=0)
    ra, rb = read_records(tmp_path / "a"), read_records(tmp_path / "b")
    np.testing.assert_array_equal(ra["accepted"], rb["accepted"])
    np.testing.assert_allclose(ra["log_alpha"], rb["log_alpha"], atol=1e-2, rtol=0)
    assert np.isfinite(ra["log_alpha"]).all()


def test_transfer_table_naive_vs_flow(aa, plain_run, tmp_path):
    from moltune.flow.pt_sampler import render_transfer, run_flow_factory, transfer_table

    rows = transfer_table(run_flow_factory("identity"), {"AA": plain_run}, n_pairs=300, n_boot=50)
    assert [r["pair"] for r in rows] == [[0, 1], [1, 2], [0, 2]]
    for r in rows:  # the identity flow is the naive swap, entry by entry
        assert r["acceptance_flow"]["mean"] == pytest.approx(
            r["acceptance_naive"]["mean"], abs=1e-9
        )
    assert 0.01 < rows[0]["acceptance_naive"]["mean"] < 0.5
    assert rows[2]["acceptance_naive"]["mean"] < rows[0]["acceptance_naive"]["mean"]
    assert "| AA | 300-450 |" in render_transfer(rows)
    # a run's weights rebuilt for the peptide: fine on AA, refused where shapes are per-molecule
    run = tmp_path / "flowrun"
    _untrained_tarflow_run(plain_run, run)
    factory = run_flow_factory(str(run))
    rows = transfer_table(factory, {"AA": plain_run}, pairs=[(0, 1)], n_pairs=200, n_boot=20)
    assert rows[0]["acceptance_flow"]["mean"] == pytest.approx(
        rows[0]["acceptance_naive"]["mean"], abs=1e-6
    )  # untrained: the identity
    other = build_peptide("AS", minimize=False)
    with pytest.raises(UserError, match="not transferable"):
        factory(other.topology, [other.positions_nm[None]])


def test_compare_samplers_writes_table_with_matched_cpu(plain_run, tmp_path):
    from moltune.flow.pt_sampler import compare_samplers

    opts = {"save_interval_ps": 0.1, "equilibration_ps": 0.2, "checkpoint_interval_ps": 1.0,
            "seed": 2}  # fmt: skip
    doc = compare_samplers("AA", "identity", 0.002, tmp_path / "cmp", temperatures_K=TEMPS3,
                           skip_temperatures_K=(300.0, 670.0), progress=False,
                           reference_dir=plain_run, **opts)  # fmt: skip
    for name in ("compare.md", "compare.json", "compare.png"):
        assert (tmp_path / "cmp" / name).is_file()
    rows = {r["variant"]: r for r in doc["table"]}
    assert set(rows) == {"plain_pt", "flow_pt", "flow_skip"}
    assert rows["flow_skip"]["temperatures_K"] == [300.0, 670.0]
    budget = doc["cpu_budget_s"]
    for name in ("plain_pt", "flow_skip"):  # extended (resumed longer) to the flow run's CPU
        r = rows[name]
        assert r["cpu_s"] >= 0.8 * budget or r["production_ps"] >= 10 * 2.0 - 1e-9, (name, r)
    assert rows["plain_pt"]["energy_kjmol"]["ratio_to_plain"] == pytest.approx(1.0)
    assert "z_vs_reference" in rows["flow_pt"]["psi_alpha"] or not math.isfinite(
        rows["flow_pt"]["psi_alpha"]["mean_error"] or math.nan
    )
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| flow_pt |" in md and "ESS / CPU h" in md and "against the long plain PT run" in md


def test_batch_means_rate_of_one_run():
    """sampler_statistics' batch-means figure: 50 ps batches, none below 4 of them."""
    from moltune.flow.pt_sampler import _batch_means_rate
    from moltune.physics.timeseries import batch_means

    x = np.random.default_rng(0).normal(size=2_000)  # 200 ps at 0.1 ps: exactly 4 batches
    bm = _batch_means_rate(x, 0.1, cpu_h=0.5)
    ref = batch_means([x], 500)
    assert bm["n_batches"] == 4 and bm["batch_ps"] == pytest.approx(50.0)
    assert bm["ess_per_cpu_hour"] == pytest.approx(ref.ess / 0.5)
    assert bm["ess_per_cpu_hour_error"] == pytest.approx(ref.ess_error / 0.5)
    assert _batch_means_rate(x[:1_999], 0.1, cpu_h=0.5) is None
