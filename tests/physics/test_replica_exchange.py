"""Parallel tempering: Metropolis swaps with known answers, swap bookkeeping on real OpenMM
contexts, the on-disk format, resuming after an interruption (SIGKILL), and (slow) AA energies."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import integrate, stats

from moltune.common.errors import InputFileError, InvalidInputError, UserError
from moltune.physics.ptdata import (
    STATE_FILE,
    block_standard_error,
    energy_statistics,
    load_pt_data,
    naive_swap_acceptance,
)
from moltune.physics.replica_exchange import (
    PTConfig,
    ReplicaSet,
    RunState,
    metropolis_accept,
    plain_swap_move,
    simulate,
    swap_log_acceptance,
    swap_pairs,
)
from moltune.physics.units import KB_KJMOL, beta

TEMPS = [300.0, 450.0, 670.0, 1000.0]
TINY = {"time_ns": 0.002, "save_interval_ps": 0.2, "swap_interval_ps": 0.1,
        "equilibration_ps": 0.2, "checkpoint_interval_ps": 0.5, "seed": 3}  # fmt: skip


def test_swap_pairs_alternate():
    assert swap_pairs(0, 4) == [(0, 1), (2, 3)]
    assert swap_pairs(1, 4) == [(1, 2)]
    assert swap_pairs(2, 5) == [(0, 1), (2, 3)]
    assert swap_pairs(3, 5) == [(1, 2), (3, 4)]
    assert swap_pairs(0, 1) == []


def test_metropolis_known_probability():
    # exchanging U_cold = -500 (at 300 K) with U_hot = -480 (at 450 K): ratio exp(db * dU)
    b1, b2 = beta(300.0), beta(450.0)
    lr = swap_log_acceptance(b1, b2, -500.0, -480.0)
    assert lr == pytest.approx((1 / (KB_KJMOL * 300) - 1 / (KB_KJMOL * 450)) * (-20.0))
    p = math.exp(lr)
    rng = np.random.default_rng(0)
    n = 100_000
    freq = np.mean([metropolis_accept(lr, rng) for _ in range(n)])
    assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n)
    # downhill in the combined energy: always accepted
    assert all(
        metropolis_accept(swap_log_acceptance(b1, b2, -480.0, -500.0), rng) for _ in range(100)
    )


def test_swap_acceptance_of_harmonic_oscillators():
    """d-dimensional harmonic oscillator: U ~ Gamma(d/2, kT) exactly, so the plain PT acceptance
    between two temperatures is a known integral; Metropolis on sampled energies must match it."""
    d, t1, t2 = 12, 300.0, 400.0
    k1, k2 = KB_KJMOL * t1, KB_KJMOL * t2
    b1, b2 = 1 / k1, 1 / k2
    g1, g2 = stats.gamma(d / 2, scale=k1), stats.gamma(d / 2, scale=k2)

    def inner(u1):  # E over u2 of min(1, exp((b1-b2)(u1-u2))); accepted surely when u2 <= u1
        sure = g2.cdf(u1)
        part = integrate.quad(lambda u2: g2.pdf(u2) * math.exp((b1 - b2) * (u1 - u2)), u1, np.inf)[
            0
        ]
        return sure + part

    exact = integrate.quad(lambda u1: g1.pdf(u1) * inner(u1), 0, g1.ppf(1 - 1e-12), limit=200)[0]
    rng = np.random.default_rng(1)
    n = 40_000
    u1, u2 = g1.rvs(n, random_state=rng), g2.rvs(n, random_state=rng)
    acc = np.mean(
        [metropolis_accept(swap_log_acceptance(b1, b2, a, b), rng) for a, b in zip(u1, u2)]
    )
    assert 0.05 < exact < 0.95
    assert abs(acc - exact) < 4 * math.sqrt(exact * (1 - exact) / n)
    assert naive_swap_acceptance(u1, u2, t1, t2) == pytest.approx(exact, abs=0.02)


def test_swaps_exchange_configurations_on_openmm_contexts(aa):
    """Fixed energies chosen so pair (0,1) has ratio e^-1 and pair (2,3) ratio > 1; accepted swaps
    must move positions between contexts and rescale velocities by sqrt(T_new/T_old)."""
    import openmm

    from moltune.physics.forcefield import create_system

    cfg = PTConfig(temperatures_K=TEMPS, **TINY)
    rs = ReplicaSet(openmm.XmlSerializer.serialize(create_system(aa.topology)), cfg)
    try:
        rs.initialize(np.repeat(aa.positions_nm[None], 4, axis=0))
        rs.step(5, False)
        temps, betas = np.asarray(TEMPS), beta(np.asarray(TEMPS))
        state = RunState(0, 0, 0, 0, np.arange(4, dtype=np.int32), np.zeros(3, np.int64),
                       np.zeros(3, np.int64), np.random.default_rng(7), None, None, [])  # fmt: skip
        energies = np.array([0.0, 1.0 / (betas[0] - betas[1]), 0.0, -5.0 / (betas[2] - betas[3])])
        n_events, acc01 = 600, 0
        for _ in range(n_events):
            state.swap_events = 0  # always the even pairs
            pos0, vel0 = rs.get_states()
            walkers0 = state.walkers.copy()
            res = plain_swap_move(rs, state, temps, betas, energies)
            pos1, vel1 = rs.get_states()
            assert res[1] == -1 and res[2] == 1  # odd pair not tried; (2,3) always accepted
            np.testing.assert_allclose(pos1[2], pos0[3], atol=1e-9)
            np.testing.assert_allclose(vel1[3], vel0[2] * math.sqrt(1000 / 670), rtol=1e-6)
            if res[0] == 1:
                acc01 += 1
                np.testing.assert_allclose(pos1[0], pos0[1], atol=1e-9)
                np.testing.assert_allclose(vel1[0], vel0[1] * math.sqrt(300 / 450), rtol=1e-6)
                assert (state.walkers[:2] == walkers0[[1, 0]]).all()
            else:
                np.testing.assert_allclose(pos1[0], pos0[0], atol=1e-9)
        p = math.exp(-1)
        assert abs(acc01 / n_events - p) < 4 * math.sqrt(p * (1 - p) / n_events)
        assert sorted(state.walkers.tolist()) == [0, 1, 2, 3]
    finally:
        rs.close()


def test_run_writes_documented_format(aa, tmp_path):
    out = tmp_path / "pt"
    res = simulate(aa, out, PTConfig(temperatures_K=TEMPS, **TINY), progress=False)
    assert res["complete"] and res["n_frames"] == 10
    data = load_pt_data(out)
    assert data.temperatures_K.tolist() == TEMPS
    assert len(data.xyz_nm) == 4 and data.xyz_nm[0].shape == (10, 23, 3)
    assert data.xyz_nm[0].dtype == np.float32 and data.energy_kjmol[0].dtype == np.float64
    np.testing.assert_allclose(data.time_ps, np.arange(1, 11) * 0.2)
    # the saved energy is the force-field energy of the saved frame (float32 rounding aside)
    from moltune.physics.peptide import potential_energy

    for k in (0, 3):
        u = potential_energy(data.topology, data.xyz_nm[k][-1].astype(np.float64))
        assert u == pytest.approx(data.energy_kjmol[k][-1], abs=0.5)
    # replica indices: a permutation at every frame
    perm = np.stack(data.replica_index)
    assert (np.sort(perm, axis=0) == np.arange(4)[:, None]).all()
    assert data.swap_attempts.tolist() == [10, 10, 10]  # 20 production events, pairs alternate
    assert (data.swap_accepts <= data.swap_attempts).all()
    assert data.swap_accepted.shape == (20, 3)
    meta = json.loads((out / "metadata.json").read_text())
    for key in ("forcefield", "solvent", "timestep_fs", "friction_per_ps", "save_interval_ps",
                "swap_interval_ps", "seeds", "package_versions", "temperatures_K"):  # fmt: skip
        assert key in meta
    assert meta["forcefield"] == ["amber14-all.xml", "implicit/obc2.xml"] and meta["complete"]
    assert data.md_topology.n_atoms == 23 and data.topology.getNumAtoms() == 23
    assert energy_statistics(data)["temperatures"][0]["n_frames"] == 10


def test_resume_after_stop_and_extend(aa, tmp_path):
    cfg = PTConfig(temperatures_K=TEMPS, **TINY)
    ref = load_pt_data(simulate(aa, tmp_path / "a", cfg, progress=False)["out"])
    part = simulate(aa, tmp_path / "b", cfg, progress=False, stop_after_chunks=2)
    assert not part["complete"] and part["n_frames"] == 4  # checkpoints at 0.5, 1 ps: 0.2..0.8
    assert load_pt_data(tmp_path / "b").n_frames == 4  # a partial run is readable
    # a stale chunk written after the last state (crash between the two writes) is discarded
    (tmp_path / "b" / "chunks" / "chunk_000002.npz").write_bytes(b"junk")
    simulate(aa, tmp_path / "b", PTConfig(temperatures_K=TEMPS, workers=2, **TINY), progress=False)
    got = load_pt_data(tmp_path / "b")
    np.testing.assert_allclose(got.time_ps, ref.time_ps)
    assert got.swap_attempts.tolist() == ref.swap_attempts.tolist()
    # resumed from the context checkpoints (in worker processes): bit-identical trajectory
    assert np.array_equal(got.xyz_nm, ref.xyz_nm) and np.array_equal(got.energy_kjmol, ref.energy_kjmol)
    # extending a finished run with a longer time continues it
    longer = PTConfig(temperatures_K=TEMPS, **{**TINY, "time_ns": 0.003})
    simulate(aa, tmp_path / "b", longer, progress=False, stop_after_chunks=1)
    assert load_pt_data(tmp_path / "b").n_frames == 11  # mid-extension: the chunks, not stale data
    assert simulate(aa, tmp_path / "b", longer, progress=False)["n_frames"] == 15
    np.testing.assert_allclose(load_pt_data(tmp_path / "b").time_ps, np.arange(1, 16) * 0.2)
    with pytest.raises(UserError, match="other settings"):
        simulate(aa, tmp_path / "b", PTConfig(temperatures_K=TEMPS, **{**TINY, "seed": 9}))


def test_resume_after_sigkill_via_cli(aa, tmp_path):
    pdb = aa.write_pdb(tmp_path / "aa.pdb")
    args = [sys.executable, "-m", "moltune.cli.main", "pt", "simulate", "--peptide", str(pdb),
            "--time-ns", "0.004", "--save-interval-ps", "0.2", "--swap-interval-ps", "0.1",
            "--equilibration-ps", "0.2", "--checkpoint-interval-ps", "0.4", "--seed", "4",
            "--no-progress"]  # fmt: skip
    full = subprocess.run([*args, "--out", str(tmp_path / "full")], check=False,
                          capture_output=True, text=True)  # fmt: skip
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen([*args, "--out", str(tmp_path / "cut")], start_new_session=True)
    deadline = time.time() + 120
    state = tmp_path / "cut" / STATE_FILE
    while time.time() < deadline and not state.exists():
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_cut = load_pt_data(tmp_path / "cut").n_frames
    again = subprocess.run([*args, "--out", str(tmp_path / "cut")], check=False,
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr
    a, b = load_pt_data(tmp_path / "full"), load_pt_data(tmp_path / "cut")
    assert n_cut < b.n_frames == a.n_frames == 20
    np.testing.assert_allclose(b.time_ps, a.time_ps)  # nothing lost, nothing duplicated
    assert b.swap_attempts.sum() == a.swap_attempts.sum()
    # the same System and the context checkpoints: the resumed run is bit-identical
    assert np.array_equal(b.xyz_nm, a.xyz_nm) and np.array_equal(b.energy_kjmol, a.energy_kjmol)


def test_bad_settings(aa, tmp_path):
    with pytest.raises(InvalidInputError, match="ascending"):
        PTConfig(temperatures_K=[450, 300])
    with pytest.raises(InvalidInputError, match="whole number"):
        PTConfig(save_interval_ps=0.00025)
    with pytest.raises(InvalidInputError, match="solvent"):
        PTConfig(solvent="water")
    with pytest.raises(InputFileError):
        load_pt_data(tmp_path / "nothing")


def test_block_standard_error_of_ar1():
    from scipy.signal import lfilter

    rho, n = 0.9, 400_000
    x = lfilter([1.0], [1.0, -rho], np.random.default_rng(0).normal(size=n))  # AR(1)
    # exact SE of the mean of AR(1): sigma_x * sqrt((1+rho)/(1-rho) / n)
    exact = math.sqrt(1 / (1 - rho**2)) * math.sqrt((1 + rho) / (1 - rho) / n)
    assert block_standard_error(x, 100) == pytest.approx(exact, rel=0.25)
    # ignoring the correlation would be 4x too small
    assert x.std() / math.sqrt(n) < 0.3 * exact


REFERENCE = {300.0: (-508, 15), 450.0: (-467, 21), 670.0: (-408, 32), 1000.0: (-322, 47)}


@pytest.mark.slow
def test_short_pt_of_aa_matches_reference_broadly(aa, tmp_path):
    cfg = PTConfig(temperatures_K=TEMPS, time_ns=0.04, save_interval_ps=0.2, equilibration_ps=5,
                   checkpoint_interval_ps=20, seed=11)  # fmt: skip
    data = load_pt_data(simulate(aa, tmp_path / "pt", cfg, progress=False)["out"])
    means = [u.mean() for u in data.energy_kjmol]
    assert means == sorted(means)
    for t, u in zip(TEMPS, data.energy_kjmol):
        ref_mean, ref_std = REFERENCE[t]
        assert abs(u.mean() - ref_mean) < 0.6 * ref_std + 5, (t, u.mean())
        assert 0.5 * ref_std < u.std() < 1.6 * ref_std, (t, u.std())
    acc = data.swap_acceptance
    assert np.all((acc > 0.02) & (acc < 0.35)), acc
