"""The swap-move hook of ``replica_exchange.simulate``: a custom move is called once per swap event
with the documented arguments (and its ``flush`` before every chunk), its decisions are what the
run records, and the default move reproduces the pre-hook plain swap bit for bit."""

import math

import numpy as np

from moltune.physics.ptdata import load_pt_data
from moltune.physics.replica_exchange import (
    PTConfig,
    metropolis_accept,
    plain_swap_move,
    simulate,
    swap_log_acceptance,
    swap_pairs,
)

TEMPS = [300.0, 450.0, 670.0, 1000.0]
# 0.2 ps equilibration + 2 ps production, swaps every 0.1 ps (22 events), chunks every 0.5 ps
TINY = {"time_ns": 0.002, "save_interval_ps": 0.2, "swap_interval_ps": 0.1,
        "equilibration_ps": 0.2, "checkpoint_interval_ps": 0.5, "seed": 3}  # fmt: skip


def _previous_plain_swap(replicas, state, temps, betas, energies) -> np.ndarray:
    """The plain swap as it was before the hook (``_attempt_swaps`` of commit a39c4f6), minus the
    event counter that ``simulate`` now advances."""
    k_temps = len(temps)
    result = np.full(k_temps - 1, -1, np.int8)
    accepted_pairs = []
    for i, j in swap_pairs(state.swap_events, k_temps):
        ok = metropolis_accept(
            swap_log_acceptance(betas[i], betas[j], energies[i], energies[j]), state.rng
        )
        result[i] = int(ok)
        if ok:
            accepted_pairs.append((i, j))
    if accepted_pairs:
        pos, vel = replicas.get_states()
        updates = {}
        for i, j in accepted_pairs:
            updates[i] = (pos[j], vel[j] * math.sqrt(temps[i] / temps[j]))
            updates[j] = (pos[i], vel[i] * math.sqrt(temps[j] / temps[i]))
            state.walkers[[i, j]] = state.walkers[[j, i]]
        replicas.set_states(updates)
    return result


class _RecordingMove:
    """Delegates to ``inner`` (or rejects every tried pair) and records how it was called."""

    def __init__(self, inner=None):
        self.inner = inner
        self.calls: list[tuple[int, int, list[float]]] = []
        self.flushed: list[int] = []

    def __call__(self, replicas, state, temps, betas, energies):
        self.calls.append((state.step, state.swap_events, list(np.asarray(energies, float))))
        assert np.allclose(betas, 1.0 / (0.00831446261815324 * np.asarray(temps)))
        if self.inner is not None:
            return self.inner(replicas, state, temps, betas, energies)
        res = np.full(len(temps) - 1, -1, np.int8)
        for i, _ in swap_pairs(state.swap_events, len(temps)):
            res[i] = 0
        return res

    def flush(self, out, chunk_index):
        assert not (out / "chunks" / f"chunk_{chunk_index:06d}.npz").exists()
        self.flushed.append(chunk_index)


def _arrays(out):
    d = load_pt_data(out)
    return {
        "xyz": np.stack(d.xyz_nm),
        "energy": np.stack(d.energy_kjmol),
        "replica_index": np.stack(d.replica_index),
        "swap_accepted": d.swap_accepted,
        "swap_accepts": d.swap_accepts,
        "time_ps": d.time_ps,
    }


def test_custom_swap_move_is_called_once_per_event_and_decides(aa, tmp_path):
    move = _RecordingMove()
    simulate(aa, tmp_path / "rej", PTConfig(temperatures_K=TEMPS, **TINY), progress=False,
             swap_move=move)  # fmt: skip
    # 22 events at steps 100, 200, ..., 2200 (1 fs steps), counter 0..21 as seen by the move
    assert [c[0] for c in move.calls] == list(range(100, 2201, 100))
    assert [c[1] for c in move.calls] == list(range(22))
    assert move.flushed == [0, 1, 2, 3, 4]  # before each chunk (0.5, 1, 1.5, 2, 2.2 ps)
    got = _arrays(tmp_path / "rej")
    # a move that rejects everything: no exchange ever, walkers stay put at every frame
    assert got["swap_accepted"].shape == (20, 3)
    assert set(np.unique(got["swap_accepted"]).tolist()) == {-1, 0}
    assert got["swap_accepts"].tolist() == [0, 0, 0]
    assert (got["replica_index"] == np.arange(4)[:, None]).all()
    # the energies handed to the move at a saved step are the ones saved for that frame
    by_step = {c[0]: c[2] for c in move.calls}
    for f, t in enumerate(got["time_ps"]):
        step = round((t + 0.2) * 1000)
        if step in by_step:
            np.testing.assert_allclose(got["energy"][:, f], by_step[step], rtol=0, atol=1e-9)

    plain = _arrays(simulate(aa, tmp_path / "plain", PTConfig(temperatures_K=TEMPS, **TINY),
                             progress=False)["out"])  # fmt: skip
    assert plain["swap_accepts"].sum() > 0  # the plain run does exchange: the move mattered


def test_default_swap_move_reproduces_previous_plain_pt_bit_for_bit(aa, tmp_path):
    cfg = PTConfig(temperatures_K=TEMPS, **TINY)
    default = _arrays(simulate(aa, tmp_path / "default", cfg, progress=False)["out"])
    previous = _arrays(simulate(aa, tmp_path / "prev", cfg, progress=False,
                                swap_move=_previous_plain_swap)["out"])  # fmt: skip
    recorded = _RecordingMove(plain_swap_move)
    wrapped = _arrays(simulate(aa, tmp_path / "wrapped", cfg, progress=False,
                               swap_move=recorded)["out"])  # fmt: skip
    assert default["swap_accepts"].sum() > 0  # exchanges happened, so the swap path was exercised
    for key, ref in default.items():
        np.testing.assert_array_equal(previous[key], ref, err_msg=key)
        np.testing.assert_array_equal(wrapped[key], ref, err_msg=key)
    assert len(recorded.calls) == 22
