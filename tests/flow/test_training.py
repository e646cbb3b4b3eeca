"""A short real training run: replica-exchange data from OpenMM, Lightning, checkpoints, CLI."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from moltune.common.config import load_config
from moltune.flow.checkpoint import load_flow
from moltune.flow.losses import transport_terms
from moltune.flow.models import IdentityFlow
from moltune.flow.train import DataConfig, FlowConfig, TrainConfig, train


@pytest.fixture(scope="module")
def pt_dir(tmp_path_factory):
    """A tiny 300/450 K parallel-tempering run of AA (200 frames per temperature)."""
    from moltune.physics.replica_exchange import PTConfig, simulate

    out = tmp_path_factory.mktemp("pt") / "aa"
    cfg = PTConfig(
        temperatures_K=[300.0, 450.0], time_ns=0.02, save_interval_ps=0.1, swap_interval_ps=0.1,
        equilibration_ps=2.0, checkpoint_interval_ps=10.0, seed=3,
    )  # fmt: skip
    simulate("AA", out, cfg, progress=False)
    return out


def _cfg(pt_dir, **kw) -> TrainConfig:
    base = TrainConfig(
        flow=FlowConfig(name="baseline_ic"),
        data=DataConfig(train_dir=str(pt_dir), test_dir=None, val_pairs=32, val_fraction=0.2),
        batch_size=32, lr=2e-2, warmup_steps=2, steps=24, max_minutes=None, val_every_steps=12,
        top_k=1,
    )  # fmt: skip
    return dataclasses.replace(base, **kw)


def test_short_training_run_beats_identity(pt_dir, tmp_path):
    from moltune.physics.energy import TorchEnergy
    from moltune.physics.ptdata import load_pt_data

    run = train(_cfg(pt_dir), tmp_path / "run")
    df = pd.read_csv(run / "metrics.csv")
    losses = df[["train/loss_forward", "train/loss_inverse"]].dropna()
    assert len(losses) == 24 and np.isfinite(losses.to_numpy()).all()
    assert df["train/skipped_steps"].dropna().iloc[-1] == 0
    assert (run / "checkpoints" / "last.ckpt").exists() and (run / "config.yaml").exists()
    assert (run / "plots" / "losses.png").exists()
    summary = pd.read_json(run / "train_summary.json", typ="series")
    step0 = summary["step0"]  # the map starts as the identity: step-0 loss = b_t <U(x)>_s
    assert abs(step0["loss_forward"] - step0["identity_loss_forward"]) < 1e-6 * abs(
        step0["identity_loss_forward"]
    )
    assert abs(step0["loss_inverse"] - step0["identity_loss_inverse"]) < 1e-6 * abs(
        step0["identity_loss_inverse"]
    )
    val = df["val/acceptance_flow"].dropna()
    assert len(val) >= 2 and val.between(0, 1).all()
    assert df["val/nonfinite_fraction"].dropna().max() == 0

    # the trained flow (reloaded weights-only) has lower losses than the identity on fixed frames
    flow, info = load_flow(run)
    assert info["flow"] == "baseline_ic" and info["temperatures_K"] == [300.0, 450.0]
    data = load_pt_data(pt_dir)
    energy = TorchEnergy.from_topology(data.topology).double()
    x = torch.as_tensor(data.xyz_nm[0][::2]).double()
    y = torch.as_tensor(data.xyz_nm[1][::2]).double()
    u_s, u_t = float(data.energy_kjmol[0].mean()), float(data.energy_kjmol[1].mean())
    with torch.no_grad():
        ident = transport_terms(IdentityFlow(), energy, x, y, 300.0, 450.0, u_s, u_t)
        trained = transport_terms(flow, energy, x, y, 300.0, 450.0, u_s, u_t)
    total = lambda t: float(t.loss_forward.mean() + t.loss_inverse.mean())
    assert np.isfinite(total(trained))
    assert total(trained) < total(ident) - 0.5  # at least half a kT better in total

    # a checkpoint with flow settings this version does not know: a clear CheckpointError
    from moltune.common.errors import CheckpointError

    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    state["hyper_parameters"]["moltune"]["flow_config"]["warp_drive"] = True
    torch.save(state, tmp_path / "future.ckpt")
    with pytest.raises(CheckpointError, match="warp_drive"):
        load_flow(tmp_path / "future.ckpt")

    # resume continues from last.ckpt
    cfg2 = _cfg(pt_dir, steps=30)
    train(cfg2, run, resume=True)
    df2 = pd.read_csv(run / "metrics.csv")
    assert df2["step"].max() >= 29


def test_refuses_to_overwrite_a_run(pt_dir, tmp_path):
    from moltune.common.errors import InvalidInputError

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="already holds a run"):
        train(_cfg(pt_dir), tmp_path / "run")


def test_presets_resolve():
    for name in ("aa_300_450", "aa_300_450_gpu"):
        cfg = load_config(TrainConfig, name)
        assert cfg.flow.name == "tarflow"
    ladder = load_config(TrainConfig, "aa_ladder")
    assert ladder.data.pairs == [[0, 1], [1, 2], [2, 3]]
    assert (ladder.flow.name, ladder.flow.spline_bins, ladder.flow.couplings) == ("spline_ic", 8, 3)


def test_flat_multi_peptide_presets_still_load():
    """The flat layout of earlier ``pt train-transfer`` presets (and run folders' config.yaml)
    reads as the shipped nested preset, with that layout's old defaults where it is silent."""
    import tempfile
    from pathlib import Path

    from moltune.flow.train import load_train_config

    flat = ("flow: {name: tarflow, representation: internal, n_blocks: 2, d_model: 32, "
            "n_layers: 1, n_heads: 4, mlp_ratio: 2, scale_bound: 1.0, per_coordinate: false}\n"
            "peptides:\n  AA: {train_dir: aa_pt_train, test_dir: aa_pt_test}\n"
            "  AK: {train_dir: transfer/AK}\n  AS: {train_dir: transfer/AS}\n"
            "simulate:\n  aa_pt_train: '--peptide AA --time-ns 2 --save-interval-ps 0.5 --seed 1'\n"
            "  aa_pt_test: '--peptide AA --time-ns 1 --save-interval-ps 0.5 --seed 2'\n"
            "  transfer/AK: '--peptide AK --time-ns 0.2 --save-interval-ps 0.1 --seed 1'\n"
            "  transfer/AS: '--peptide AS --time-ns 0.2 --save-interval-ps 0.1 --seed 1'\n"
            "pairs: [[0, 1], [1, 2], [2, 3]]\nval_pairs: 200\nbatch_size: 128\nlr: 0.002\n"
            "warmup_steps: 50\nsteps: 1500\nmax_minutes: 28\nval_every_steps: 100\n"
            "threads: 1\ntorsion_origin: zero\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flat.yml"
        path.write_text(flat)
        old = load_train_config(path)
        path.write_text("peptides: {SK: {train_dir: sk}}\ndata_root: somewhere\n")
        silent = load_train_config(path)
    assert old == load_train_config("transfer_aa_ak_as")
    assert list(old.data.peptides) == ["AA", "AK", "AS"] and old.data.train_dir is None
    assert (silent.data.root, silent.data.val_pairs, silent.steps, silent.top_k) == (
        "somewhere", 200, 2000, 1)
    assert silent.torsion_origin == "zero" and silent.flow.per_coordinate is False


def test_one_and_two_peptides_train_through_the_same_path(pt_dir, odd_dirs, tmp_path):
    """One peptide is the list of one: the same ``train`` writes both runs, with the same
    checkpoint layout; the two-peptide run adds per-peptide metrics and round-robin batches."""
    flow = FlowConfig(n_blocks=1, d_model=16, n_heads=2, per_coordinate=False)
    one = _cfg(pt_dir, flow=flow, batch_size=8, steps=4, val_every_steps=2)
    two = dataclasses.replace(one, data=DataConfig(
        peptides={"AA": {"train_dir": str(pt_dir)}, "AS": {"train_dir": str(odd_dirs / "as")}},
        val_pairs=32, val_fraction=0.2))  # fmt: skip
    m = {}
    for name, cfg in (("one", one), ("two", two)):
        train(cfg, tmp_path / name)
        m[name] = pd.read_csv(tmp_path / name / "metrics.csv")
    s1 = pd.read_json(tmp_path / "one" / "train_summary.json", typ="series")
    s2 = pd.read_json(tmp_path / "two" / "train_summary.json", typ="series")
    assert s1["peptides"] == ["AA"] and s2["peptides"] == ["AA", "AS"]
    assert s1["steps"] == s2["steps"] == 4
    # one peptide keeps its metric names; two get per-peptide ones and alternate batches
    assert "train/peptide" not in m["one"] and not any("_AA_" in c for c in m["one"])
    assert m["two"]["train/peptide"].dropna().tolist() == [0, 1, 0, 1]
    v1 = m["one"].dropna(subset=["val/acceptance_flow"])
    v2 = m["two"].dropna(subset=["val/acceptance_flow"])
    assert v1["step"].tolist() == v2["step"].tolist() == [0, 2, 4]
    aa, as_ = v2["val/acceptance_flow_AA_300_450"], v2["val/acceptance_flow_AS_300_450"]
    assert aa.between(0, 1).all() and as_.between(0, 1).all() and (aa != as_).all()
    np.testing.assert_allclose(v2["val/acceptance_flow"], (aa + as_) / 2, rtol=1e-6)
    # step 0: the same starting flow on the same held-out AA frames in both runs
    assert aa.iloc[0] == pytest.approx(v1["val/acceptance_flow"].iloc[0], abs=1e-7)
    assert aa.iloc[0] == pytest.approx(v1["val/acceptance_naive"].iloc[0], abs=1e-3)
    # the same checkpoint layout: load_flow reads the first peptide's flow from either
    states = [torch.load(tmp_path / n / "checkpoints" / "last.ckpt", weights_only=True)
              for n in ("one", "two")]  # fmt: skip
    assert {k: v.shape for k, v in states[0]["state_dict"].items()} == {
        k: v.shape for k, v in states[1]["state_dict"].items()}
    assert set(states[1]["peptide_representations"]) == {"AA", "AS"}
    for n in ("one", "two"):
        f, info = load_flow(tmp_path / n)
        assert info["peptides"] == (["AA"] if n == "one" else ["AA", "AS"])
        assert f.representation.n_tokens == 23  # AA's atoms


def test_cli_flags_and_alias(pt_dir, tmp_path):
    from moltune.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(
        ["pt", "train", "--preset", "aa_300_450", "--steps", "5", "--flow", "baseline_ic",
         "--representation", "cartesian", "--out", str(tmp_path / "r")]
    )  # fmt: skip
    assert args.steps == 5 and args.flow == "baseline_ic" and args.representation == "cartesian"
    args = parser.parse_args(
        ["train-molecular", "--data-dir", str(pt_dir), "--epochs", "2", "--learning-rate",
         "0.01", "--output-dir", str(tmp_path / "r2"), "--source-temp", "300",
         "--target-temp", "450"]
    )  # fmt: skip
    assert args.data == str(pt_dir) and args.lr == 0.01 and args.out == str(tmp_path / "r2")
    with pytest.raises(SystemExit):
        parser.parse_args(["pt", "train", "--steps", "5", "--epochs", "2", "--out", "x"])


# ----------------------------------------------------------------------------- refusals (issue 15)
@pytest.fixture(scope="module")
def odd_dirs(tmp_path_factory):
    """Tiny PT runs that cannot train with ``pt_dir``: one temperature, and another peptide."""
    from moltune.physics.replica_exchange import PTConfig, simulate

    root = tmp_path_factory.mktemp("odd")
    kw = {"time_ns": 0.002, "save_interval_ps": 0.1, "swap_interval_ps": 0.1,
          "equilibration_ps": 0.5, "checkpoint_interval_ps": 10.0, "seed": 1}
    simulate("AA", root / "one_t", PTConfig(temperatures_K=[300.0], **kw), progress=False)
    simulate("AS", root / "as", PTConfig(temperatures_K=[300.0, 450.0], **kw), progress=False)
    return root


def _refused(capsys, argv, out):
    """Exit status 2, one line naming the problem, no traceback, nothing created at ``out``."""
    from moltune.cli.main import main

    before = sorted(p.relative_to(out) for p in out.rglob("*")) if out.exists() else None
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, (argv, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    after = sorted(p.relative_to(out) for p in out.rglob("*")) if out.exists() else None
    assert after == before, f"{argv} changed {out}"
    return err


def test_pt_train_refuses_bad_input_before_creating_anything(pt_dir, odd_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["pt", "train", "--preset", "aa_300_450", "--data", str(pt_dir), "--test-data", "none",
            "--out", str(out)]  # fmt: skip
    bad_yaml = tmp_path / "bad.yml"
    bad_yaml.write_text("flow: [unclosed\n")
    unknown = tmp_path / "unknown.yml"
    unknown.write_text("lrr: 0.01\n")
    nested = tmp_path / "nested.yml"
    nested.write_text("flow: 5\n")
    monitor = tmp_path / "monitor.yml"
    monitor.write_text("monitors: {energy_explosin: {}}\n")
    cases = {
        ("--steps", "-3"): "steps", ("--steps", "0"): "steps", ("--batch-size", "0"): "batch_size",
        ("--lr", "-1"): "lr", ("--preset", "bogus"): "bogus", ("--preset", str(bad_yaml)): "YAML",
        ("--preset", str(unknown)): "lrr", ("--preset", str(nested)): "flow",
        ("--preset", str(monitor)): "energy_explosin",
        ("--devices", "0"): "devices", ("--precision", "8-true"): "--precision",
        ("--data", str(odd_dirs / "one_t")): "one temperature",
        ("--test-data", str(odd_dirs / "as")): "another peptide",
        ("--batch-size", "100000"): "fewer than one batch",
    }  # fmt: skip
    for flags, word in cases.items():
        assert word in _refused(capsys, base + list(flags), out), flags

    # missing data: the error names the exact command that makes it; nothing is created
    root = tmp_path / "empty_root"
    root.mkdir()
    err = _refused(capsys, ["pt", "train", "--preset", "aa_300_450", "--data-root", str(root),
                            "--out", str(out)], out)  # fmt: skip
    assert f"moltune pt simulate --peptide AA --time-ns 2 --save-interval-ps 0.5 --seed 1 --out " \
           f"{root / 'aa_pt_train'}" in err and not list(root.iterdir())

    # a truncated last.ckpt: --resume refuses it and changes nothing
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    err = _refused(capsys, base + ["--steps", "5", "--resume"], out)
    assert "damaged" in err


# ----------------------------------------------------------------------------- device safety
class _Float32Spy(torch.overrides.TorchFunctionMode):
    """Records every op that receives a float32 tensor the step did not make itself (so one
    from module state, or from the data); tensors made inside the step are tracked by identity."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []
        self._made: list[torch.Tensor] = []  # kept alive so that ids stay unique
        self._ids: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_flatten

        flat, _ = tree_flatten((args, kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float32 and id(t) not in self._ids
               for t in flat):  # fmt: skip
            self.seen.append(getattr(func, "__name__", str(func)))
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._made.append(t)
                self._ids.add(id(t))
        return out


def _one_peptide(pt_dir, pairs, batch_size, val_pairs):
    """A module (small TarFlow) and the data module of AA's PT data, its last 20% validating."""
    from moltune.flow.lightning import TransportModule
    from moltune.flow.peptides import (
        PeptideSet,
        TransportDataModule,
        reference_energies,
        split_pairs,
    )  # fmt: skip
    from moltune.flow.train import build_flow
    from moltune.physics.energy import TorchEnergy
    from moltune.physics.ptdata import load_pt_data

    data = load_pt_data(pt_dir)
    train_sets, val_sets = split_pairs(data, None, pairs, 0.2)
    dm = TransportDataModule([PeptideSet("AA", data, pairs, train_sets, val_sets)],
                             batch_size=batch_size, val_pairs=val_pairs)  # fmt: skip
    torch.manual_seed(0)
    flow = build_flow(FlowConfig(n_blocks=1, d_model=16, n_heads=2), data.topology)
    flow.representation.fit(np.asarray(data.xyz_nm[0]))
    module = TransportModule(flow, TorchEnergy.from_topology(data.topology),
                             reference_energies(train_sets))  # fmt: skip
    return module, dm


def _module_and_batches(pt_dir):
    module, dm = _one_peptide(pt_dir, [(0, 1)], 8, 8)
    return module, next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))


def _steps_under_spy(module, train_batch, val_batch, dtype):
    x, y, ts, tt, _ = train_batch
    vx, vy, *rest = val_batch
    x, y, vx, vy = x.to(dtype), y.to(dtype), vx.to(dtype), vy.to(dtype)  # the data's dtype
    spy = _Float32Spy()
    with spy:
        terms = module._terms(x, y, ts, tt)
        (terms.loss_forward.mean() + terms.loss_inverse.mean()).backward()
        module.on_validation_epoch_start()
        module.validation_step((vx, vy, *rest), 0)
    return spy.seen, terms


def test_module_to_float64_moves_every_tensor_a_step_touches(pt_dir):
    module, train_batch, val_batch = _module_and_batches(pt_dir)
    # control: left in float32, the spy sees the network's float32 tensors
    seen, _ = _steps_under_spy(module, train_batch, val_batch, torch.float32)
    assert len(seen) > 10
    module.to(torch.float64)
    seen, terms = _steps_under_spy(module, train_batch, val_batch, torch.float64)
    assert seen == [], sorted(set(seen))[:10]
    assert np.isfinite(terms.loss_forward.detach().numpy()).all()
    assert len(module._val) == 1 and np.isfinite(module._val[0][3]["log_alpha"]).all()
    # the energy stays float64 whatever the network's precision, and stays out of checkpoints
    module.to(torch.bfloat16)
    assert {b.dtype for b in module.energy.buffers() if b.is_floating_point()} == {torch.float64}
    assert not [k for k in module.state_dict() if k.startswith(("energy.", "reference."))]
    assert module.reference.u_kjmol.dtype == torch.float64


# ----------------------------------------------------------------------------- DDP on the CPU
def _validate(module, dm):
    """One validation pass outside a Trainer: what the module logs, and the (pair, position)
    of every item this process validated."""
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    module.on_validation_epoch_start()
    seen = []
    for i, batch in enumerate(dm.val_dataloader()):
        module.validation_step(batch, i)
        seen += [(int(q), int(k)) for q, k in zip(batch[7], batch[6])]
    module.on_validation_epoch_end()
    return logged, seen


def test_ddp_ranks_validate_their_shards_and_report_the_one_process_figures(pt_dir, gloo_ranks):
    module, dm = _one_peptide(pt_dir, [(0, 1), (1, 0)], 8, 30)
    one, seen = _validate(module, dm)
    assert len(seen) == 60 and one["val/acceptance_flow"] > 0
    (ranks0, seen0), (ranks1, seen1) = gloo_ranks(lambda r: _validate(module, dm))
    assert seen0 and seen1 and not set(seen0) & set(seen1) and seen0 + seen1 == seen
    assert ranks0 == ranks1 and ranks0.keys() == one.keys()
    for k, v in one.items():
        assert ranks0[k] == pytest.approx(v, rel=1e-5, abs=1e-9), k


def _launch(args, cwd):
    """``moltune ARGS`` in a fresh process (Lightning's DDP launcher re-runs the command)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    script = shutil.which("moltune")
    if script is None:
        pytest.skip("the moltune console script is not installed")
    r = subprocess.run([sys.executable, script, *args], cwd=cwd, env=env, capture_output=True,
                       check=False,
                       text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_ddp_two_processes_train_like_one_on_the_global_batch_and_resume(pt_dir, tmp_path):
    preset = tmp_path / "tiny.yml"
    preset.write_text("flow: {name: baseline_ic}\ndata: {val_pairs: 16, val_fraction: 0.2}\n"
                      "batch_size: 16\nlr: 0.02\nwarmup_steps: 1\nsteps: 4\nval_every_steps: 2\n"
                      "max_minutes: null\ntop_k: 1\n")  # fmt: skip
    base = ["pt", "train", "--preset", str(preset), "--data", str(pt_dir), "--test-data", "none",
            "--accelerator", "cpu"]  # fmt: skip
    _launch(base + ["--devices", "1", "--out", "one"], tmp_path)
    _launch(base + ["--devices", "2", "--strategy", "ddp", "--out", "ddp"], tmp_path)
    one = torch.load(tmp_path / "one/checkpoints/last.ckpt", weights_only=True)
    ddp = torch.load(tmp_path / "ddp/checkpoints/last.ckpt", weights_only=True)
    assert one["global_step"] == ddp["global_step"] == 4
    flow_keys = [k for k in one["state_dict"] if k.startswith("flow.")]
    assert flow_keys
    for k in flow_keys:  # each rank took its half of every global batch of 16
        torch.testing.assert_close(ddp["state_dict"][k], one["state_dict"][k], rtol=1e-4,
                                   atol=1e-6)  # fmt: skip
    summary = pd.read_json(tmp_path / "ddp/train_summary.json", typ="series")
    assert summary["world_size"] == 2 and summary["steps"] == 4
    first = pd.read_csv(tmp_path / "one/metrics.csv")["train/loss"].dropna().to_numpy()
    both = pd.read_csv(tmp_path / "ddp/metrics.csv")["train/loss"].dropna().to_numpy()
    np.testing.assert_allclose(both, first, rtol=1e-4)  # rank-mean of the halves = global mean
    # each rank validated half the pairs; the figures are those of the whole set
    v1, v2 = pd.read_csv(tmp_path / "one/metrics.csv"), pd.read_csv(tmp_path / "ddp/metrics.csv")
    val = [c for c in v1.columns if c.startswith("val/")]
    assert "val/acceptance_flow" in val and set(val) <= set(v2.columns)
    for c in val:
        a, b = v1[c].dropna().to_numpy(), v2[c].dropna().to_numpy()
        assert len(a) == len(b) > 0, c
        # atol: the round-trip RMSD is float32 roundoff (~1e-7 nm), batch-size dependent
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=c)
    # the DDP run resumes under DDP; the earlier rows stay in metrics.csv
    _launch(base + ["--devices", "2", "--strategy", "ddp", "--steps", "6", "--resume",
                    "--out", "ddp"], tmp_path)  # fmt: skip
    again = torch.load(tmp_path / "ddp/checkpoints/last.ckpt", weights_only=True)
    assert again["global_step"] == 6
    steps = pd.read_csv(tmp_path / "ddp/metrics.csv").dropna(subset=["train/loss"])["step"]
    assert sorted(steps.astype(int)) == [1, 2, 3, 4, 5, 6]  # batches trained by each row


def test_tensorboard_logged_run_is_read_back_by_runs_diagnose(pt_dir, tmp_path, capsys):
    from moltune.cli.main import main
    from moltune.validation.logs import read_tensorboard

    preset = tmp_path / "tiny.yml"
    preset.write_text("flow: {name: baseline_ic}\ndata: {val_pairs: 16, val_fraction: 0.2}\n"
                      "batch_size: 16\nlr: 0.02\nwarmup_steps: 1\nsteps: 6\nval_every_steps: 3\n"
                      "max_minutes: null\ntop_k: 1\n")  # fmt: skip
    out = tmp_path / "tb"
    rc = main(["pt", "train", "--preset", str(preset), "--data", str(pt_dir), "--test-data",
               "none", "--logger", "tensorboard", "--out", str(out)])  # fmt: skip
    assert rc == 0
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    tidy = read_tensorboard(out / "tensorboard")
    csv = pd.read_csv(out / "metrics.csv")
    tb_loss = tidy[tidy["metric"] == "train/loss"].sort_values("step")["value"].to_numpy()
    np.testing.assert_allclose(tb_loss, csv["train/loss"].dropna().to_numpy(), rtol=1e-6)
    capsys.readouterr()
    rc = main(["runs", "diagnose", str(out / "tensorboard"), "--out", str(tmp_path / "diag")])
    assert rc == 0
    import json

    diagnosis = json.loads((tmp_path / "diag" / "diagnosis.json").read_text())
    assert "train/loss" in json.dumps(diagnosis) and (tmp_path / "diag" / "diagnosis.md").is_file()


@pytest.mark.slow
def test_fresh_checkout_trains_the_preset_from_a_data_root(tmp_path):
    """``moltune pt train --preset aa_300_450 --data-root DIR`` with DIR made by
    ``moltune pt simulate`` (short runs under the preset's folder names)."""
    from moltune.cli.main import main

    root = tmp_path / "data"
    for name, seed in (("aa_pt_train", 1), ("aa_pt_dense", 3), ("aa_pt_test", 2)):
        assert main(["pt", "simulate", "--peptide", "AA", "--temperatures", "300", "450",
                     "--time-ns", "0.01", "--save-interval-ps", "0.2", "--equilibration-ps", "1",
                     "--seed", str(seed), "--no-progress", "--out", str(root / name)]) == 0
    out = tmp_path / "run"
    rc = main(["pt", "train", "--preset", "aa_300_450", "--data-root", str(root), "--steps", "3",
               "--batch-size", "16", "--out", str(out)])  # fmt: skip
    assert rc == 0
    summary = pd.read_json(out / "train_summary.json", typ="series")
    assert summary["steps"] == 3
    cfg = load_config(TrainConfig, out / "config.yaml")
    assert cfg.data.root == str(root) and cfg.data.train_dir == ["aa_pt_train", "aa_pt_dense"]
    val = pd.read_csv(out / "metrics.csv")["val/acceptance_flow"].dropna()
    assert len(val) >= 2 and val.between(0, 1).all()
