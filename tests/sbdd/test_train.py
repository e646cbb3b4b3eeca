"""FiLM fine-tuning: a tiny real run (tiny model of the published layout, real complexes, real
Lightning), resume, the monitor stop path through the CLI, and a constructed adapter collapse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
COMPLEXES = SHARED / "data" / "complexes"
SPLIT = {"3rfm": "train", "1w1p": "train", "1fbh": "val", "8bch": "val"}

pytestmark = pytest.mark.skipif(not COMPLEXES.is_dir(), reason="shared complexes not available")


@pytest.fixture(scope="module")
def tiny(tiny_sbdd_factory):
    return tiny_sbdd_factory(SPLIT, "sbdd_train")


def _cfg(tiny, out, **kw):
    from moltune.common.config import merge
    from moltune.sbdd.train import FinetuneConfig

    base = {
        "checkpoint": str(tiny["ckpt"]), "out": str(out), "mode": "adapter", "max_steps": 4,
        "batch_size": 2, "val_every_n_steps": 2, "progress": False, "threads": 1,
        "data": {"processed": str(tiny["processed"])},
        "film": {"hidden_dims": [16]},
        "optim": {"lr": 1e-2, "warmup_steps": 1},
        "eval": {"every_n_steps": 2, "n_samples": 2, "timesteps": 3},
        "diagnostics": {"every_n_steps": 1},
        "monitors": {"quality_floor": {"enabled": False}},
    }
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = base[k] | v
        else:
            base[k] = v
    return merge(FinetuneConfig(), base)


@pytest.fixture(scope="module")
def healthy_run(tiny):
    from moltune.sbdd.model import LigandDiffusionModel
    from moltune.sbdd.train import train

    out = tiny["root"] / "run"
    info = train(_cfg(tiny, out))
    before = LigandDiffusionModel.from_checkpoint(tiny["ckpt"]).diffsbdd_state_dict()
    return {"out": out, "info": info, "before": before}


def test_adapter_only_run_trains_only_the_adapter(tiny, healthy_run):
    from moltune.sbdd.film import load_adapter
    from moltune.sbdd.model import LigandDiffusionModel

    info, out = healthy_run["info"], healthy_run["out"]
    assert info["global_step"] == 4
    assert info["stopped"] is None
    # trainable = adapter parameters only: 960*16+16 + 16*16+16 (2 x joint_nf 8)
    assert info["n_trainable"] == 960 * 16 + 16 + 16 * 16 + 16
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for k, v in healthy_run["before"].items():
        assert torch.equal(state["model." + k], v), f"frozen tensor {k} changed"
    adapter = load_adapter(out / "checkpoints" / "adapter-last.pt")
    assert adapter.last.weight.abs().max() > 0  # moved away from the identity init
    model = LigandDiffusionModel.from_checkpoint(tiny["ckpt"])
    model.set_film(adapter)  # the exported adapter fits the pretrained model


def test_run_folder_metrics_and_checkpoints(healthy_run):
    out = healthy_run["out"]
    for name in ("config.yaml", "metrics.csv", "report.md", "summary.json",
                 "plots/training.png"):
        assert (out / name).is_file(), name
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["mode"] == "adapter" and cfg["max_steps"] == 4
    df = pd.read_csv(out / "metrics.csv")
    # QED / SA are logged only when some molecule is valid and connected (else undefined)
    has_good = (df.get("val/valid_and_connected", pd.Series(dtype=float)).fillna(0) > 0).any()
    assert ("val/qed" in df.columns) == bool(has_good)
    for col in ("train/loss", "val/loss", "val/validity", "val/connectivity", "val/n_samples",
                "adapter/gamma_mean", "adapter/gamma_std", "adapter/beta_mean",
                "adapter/beta_std", "adapter/gamma_drift", "adapter/grad_norm"):
        assert col in df.columns, col
    assert df["train/loss"].notna().sum() == 4
    assert np.isfinite(df["val/loss"].dropna()).all() and df["val/loss"].notna().sum() == 2
    v = df["val/validity"].dropna()
    assert len(v) == 2 and ((v >= 0) & (v <= 1)).all()
    g = df["adapter/gamma_mean"].dropna()
    # identity init: gamma starts at 1 and moves only slightly at lr 1e-2
    assert len(g) >= 4 and abs(g.iloc[0] - 1) < 0.1 and g.nunique() > 1
    assert (df["adapter/grad_norm"].dropna() > 0).all()
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and any(c.startswith("step") for c in ckpts)
    assert len([c for c in ckpts if c.startswith("step")]) <= 2  # top_k
    assert (out / "checkpoints" / "adapter-best.pt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_val"] == 2 and summary["checkpoint"].endswith("tiny.ckpt")


def test_resume_continues_step_count(tiny, healthy_run, tmp_path):
    import shutil

    from moltune.common.errors import InvalidInputError
    from moltune.sbdd.train import train

    out = tmp_path / "run"
    shutil.copytree(healthy_run["out"], out)
    with pytest.raises(InvalidInputError, match="--resume"):
        train(_cfg(tiny, out))
    info = train(_cfg(tiny, out, max_steps=6), resume=True)
    assert info["global_step"] == 6
    df = pd.read_csv(out / "metrics.csv")
    steps = df.dropna(subset=["train/loss"])["step"]
    assert steps.max() >= 5  # new rows continue after step 4 rather than restarting at 0


def test_monitor_stop_writes_stopped_json_and_cli_exits_nonzero(tiny, tmp_path):
    from moltune.cli.main import main
    from moltune.common.config import to_yaml
    from moltune.validation.monitors import EXIT_STOPPED

    out = tmp_path / "floor"
    cfg = _cfg(tiny, out, max_steps=6,
               monitors={"quality_floor": {"enabled": True, "action": "stop",
                                           "floors": {"val/connectivity": 0.5}}})
    cfg_file = tmp_path / "cfg.yml"
    cfg_file.write_text(to_yaml(cfg))
    rc = main(["sbdd", "train", "--config", str(cfg_file)])
    assert rc == EXIT_STOPPED != 0
    stopped = json.loads((out / "stopped.json").read_text())
    # an untrained tiny model makes no connected molecules: connectivity 0 < 0.5 at the first eval
    assert stopped["monitor"] == "quality_floor"
    assert "val/connectivity" in stopped["message"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] < 6
    assert "STOPPED" in (out / "report.md").read_text()


def test_constructed_adapter_collapse_is_stopped_by_drift_monitor(tiny, tmp_path):
    """A far too high learning rate on the adapter: gamma runs away from 1; the drift monitor
    stops the run before max_steps with that reason."""
    from moltune.sbdd.train import train

    out = tmp_path / "collapse"
    info = train(_cfg(tiny, out, max_steps=12, val_every_n_steps=4,
                      optim={"lr": 5.0, "warmup_steps": 0, "schedule": "constant",
                             "grad_clip": 0.0},
                      eval={"every_n_steps": 100},
                      monitors={"adapter_drift": {"action": "stop",
                                                  "metric": "adapter/gamma_drift",
                                                  "low": 0.0, "high": 0.5}}))
    assert info["stopped"] is not None
    assert info["stopped"]["monitor"] == "adapter_drift"
    assert info["global_step"] < 12
    df = pd.read_csv(out / "metrics.csv")
    assert df["adapter/gamma_drift"].dropna().max() > 0.5


def test_standin_training_writes_loadable_diffsbdd_checkpoint_and_resumes(tiny, tmp_path):
    from moltune.sbdd.checkpoint import load_checkpoint
    from moltune.sbdd.model import LigandDiffusionModel
    from moltune.sbdd.standin import PUBLISHED_HPARAMS, StandinConfig, train_standin

    cfg = StandinConfig(data=str(tiny["processed"]), out=str(tmp_path / "standin"),
                        complexes=["3rfm", "1fbh"], steps=3, batch_size=2, save_every=2,
                        warmup_steps=1, eval_n_samples=1, eval_timesteps=2, threads=1,
                        egnn_overrides={"hidden_nf": 16, "n_layers": 1, "edge_cutoff_pocket": 0.5})
    res = train_standin(cfg, progress=False)
    ck = load_checkpoint(tmp_path / "standin" / "checkpoints" / "standin.ckpt")
    assert ck.meta["global_step"] == 3
    assert all(k.startswith("ddpm.") for k in ck.state_dict)
    hp = ck.hyper_parameters
    assert hp["diffusion_params"] == PUBLISHED_HPARAMS["diffusion_params"]
    assert hp["egnn_params"]["joint_nf"] == 32 and hp["egnn_params"]["hidden_nf"] == 16
    assert len(hp["node_histogram"]) == 107 and len(hp["node_histogram"][0]) == 1671
    model = LigandDiffusionModel.from_checkpoint(ck)
    assert model.joint_nf == 32
    assert res["n_pockets"] == 2 and 0 <= res["summary"]["validity"] <= 1
    assert (tmp_path / "standin" / "plots" / "standin_eval.png").is_file()
    # resume: more steps continue from last.ckpt, the earlier metric rows are kept
    cfg.steps = 5
    train_standin(cfg, progress=False)
    rows = pd.read_csv(tmp_path / "standin" / "metrics.csv").dropna(subset=["train/loss"])
    assert rows["step"].astype(int).tolist() == [0, 1, 2, 3, 4]  # Lightning's 0-based steps
    assert load_checkpoint(tmp_path / "standin" / "checkpoints" / "standin.ckpt"
                           ).meta["global_step"] == 5


def test_standin_ema_checkpoint_is_the_weight_average(tiny, tmp_path):
    """With ema_decay d, standin.ckpt holds d * initial + (1 - d) * trained after one step
    (one complex, batch of two copies)."""
    from moltune.sbdd.checkpoint import load_checkpoint
    from moltune.sbdd.standin import StandinConfig, build_model, load_items, train_standin

    cfg = StandinConfig(data=str(tiny["processed"]), out=str(tmp_path / "ema"),
                        complexes=["3rfm"], steps=1, batch_size=2, save_every=1, warmup_steps=1,
                        ema_decay=0.25, eval_n_samples=1, eval_timesteps=2, threads=1,
                        egnn_overrides={"hidden_nf": 16, "n_layers": 1, "edge_cutoff_pocket": 0.5})
    train_standin(cfg, progress=False)
    items = load_items(tiny["processed"], cfg.splits, cfg.complexes)
    w0 = build_model(cfg, items).diffsbdd_state_dict()
    # last.ckpt is the Lightning checkpoint: the trained weights under model.*, the EMA's ema.*
    state = torch.load(tmp_path / "ema" / "checkpoints" / "last.ckpt", weights_only=True)
    trained = build_model(cfg, items)
    trained.load_state_dict({k[len("model."):]: v for k, v in state["state_dict"].items()
                             if k.startswith("model.")})  # fmt: skip
    w1 = trained.diffsbdd_state_dict()
    ema = load_checkpoint(tmp_path / "ema" / "checkpoints" / "standin.ckpt").state_dict
    moved = 0
    for k, v in ema.items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.25 * w0[k] + 0.75 * w1[k], atol=1e-6), k
            moved += int(not torch.allclose(w0[k], w1[k]))
    assert moved > 0


def test_centre_ligand_on_pocket_moves_the_ligand_rigidly(tiny):
    from scipy.spatial.distance import pdist

    from moltune.sbdd.standin import centre_ligand_on_pocket, load_items

    d = load_items(tiny["processed"], ["train", "val"], ["3rfm"])[0]
    c = centre_ligand_on_pocket(d)
    lig, new = np.asarray(d["lig_coords"], float), np.asarray(c["lig_coords"], float)
    assert np.linalg.norm(lig.mean(0) - np.asarray(d["pocket_coords"]).mean(0)) > 0.5
    np.testing.assert_allclose(new.mean(0), np.asarray(d["pocket_coords"]).mean(0), atol=1e-4)
    np.testing.assert_allclose(pdist(new), pdist(lig), atol=1e-4)
    assert c["pocket_coords"] is d["pocket_coords"]


def test_eval_pockets_must_be_validation_complexes(tiny, tmp_path):
    """eval.pockets restricts generation to named validation complexes; a training complex (or
    an unknown id) is refused before any training step."""
    from moltune.common.errors import InvalidInputError
    from moltune.sbdd.train import train

    with pytest.raises(InvalidInputError, match=r"eval.pockets \['3rfm'\]"):
        train(_cfg(tiny, tmp_path / "bad", eval={"every_n_steps": 2, "n_samples": 1,
                                                  "timesteps": 2, "pockets": ["3rfm"]}))


def test_eval_pockets_limits_generation_to_those_pockets(tiny, tmp_path):
    from moltune.sbdd.train import train

    out = tmp_path / "one"
    train(_cfg(tiny, out, max_steps=2, eval={"every_n_steps": 2, "n_samples": 2,
                                             "timesteps": 2, "pockets": ["8bch"]}))
    df = pd.read_csv(out / "metrics.csv")
    v = df["val/validity"].dropna()
    # one pocket x 2 samples: validity can only be 0, 0.5 or 1
    assert len(v) >= 1 and set(v.round(6)) <= {0.0, 0.5, 1.0}


def test_data_ligand_at_pocket_com_moves_train_and_val_ligands(tiny, tmp_path):
    """data.ligand_at_pocket_com puts every ligand (train and val) on its pocket's centre of
    mass, as the sbdd_standin preset trains; off, ligands keep their crystal positions."""
    from moltune.sbdd.train import load_splits

    on = load_splits(_cfg(tiny, tmp_path / "a", data={"processed": str(tiny["processed"]),
                                                      "ligand_at_pocket_com": True}),
                     tiny["processed"])
    off = load_splits(_cfg(tiny, tmp_path / "b"), tiny["processed"])
    for moved, orig in zip(on[0] + on[1], off[0] + off[1]):
        poc = np.asarray(orig["pocket_coords"], float).mean(0)
        np.testing.assert_allclose(np.asarray(moved["lig_coords"], float).mean(0), poc, atol=1e-4)
    offsets = [np.linalg.norm(np.asarray(d["lig_coords"], float).mean(0)
                              - np.asarray(d["pocket_coords"], float).mean(0))
               for d in off[0] + off[1]]
    assert max(offsets) > 0.5


def test_film_standin_preset_matches_how_the_standin_was_trained():
    """The stand-in fine-tuning preset must centre ligands on the pocket (as sbdd_standin
    trains) and evaluate at the checkpoint's full 500 steps (the stand-in fails at fewer)."""
    from moltune.common.config import load_config
    from moltune.sbdd.standin import StandinConfig
    from moltune.sbdd.train import FinetuneConfig

    cfg = load_config(FinetuneConfig, "sbdd_film_standin")
    standin = load_config(StandinConfig, "sbdd_standin_multi")
    assert cfg.data.ligand_at_pocket_com == standin.ligand_at_pocket_com is True
    assert cfg.eval.timesteps == standin.eval_timesteps == 500
    assert cfg.mode == "adapter" and cfg.film.init == "identity"


def test_sbdd_train_refuses_bad_input_before_creating_anything(tiny, tmp_path, capsys):
    from moltune.cli.main import main
    from moltune.common.config import to_yaml

    out = tmp_path / "run"
    good = tmp_path / "good.yml"
    good.write_text(to_yaml(_cfg(tiny, out)))
    bad = tmp_path / "bad.yml"
    bad.write_text("optim: {lr: [\n")
    unknown = tmp_path / "unknown.yml"
    unknown.write_text(good.read_text() + "learning_rate: 0.1\n")
    cases = [
        (["--config", str(good), "--lr", "-1"], "optim.lr"),
        (["--preset", "bogus", "--checkpoint", str(tiny["ckpt"]), "--out", str(out)], "bogus"),
        (["--config", str(bad)], "YAML"),
        (["--config", str(unknown)], "learning_rate"),
        (["--config", str(good), "--devices", "0"], "devices"),
        (["--config", str(good), "--max-steps", "0"], "max_steps"),
        (["--config", str(good), "--data", str(tmp_path)], "processed folder"),
    ]
    for flags, word in cases:
        rc = main(["sbdd", "train", *flags])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and word in err, (flags, err)
        assert "Traceback" not in err and not out.exists(), flags
    # --resume on a truncated last.ckpt: refused, nothing changed
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04")
    rc = main(["sbdd", "train", "--config", str(good), "--resume"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "damaged" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in out.rglob("*")) == ["checkpoints", "last.ckpt"]


def test_wandb_logged_run_is_kept_offline_and_read_back_by_runs_diagnose(tiny, tmp_path, capsys):
    """``--logger wandb``: an offline W&B run under RUN/wandb beside metrics.csv (always
    written), which is what ``runs diagnose`` reads (W&B's own .wandb file is binary)."""
    pytest.importorskip("wandb")
    from moltune.cli.main import main
    from moltune.common.config import to_yaml

    out = tmp_path / "wb"
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(to_yaml(_cfg(tiny, out)))
    assert main(["sbdd", "train", "--config", str(cfg), "--logger", "wandb"]) == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    history = list(runs[0].glob("run-*.wandb"))
    assert len(history) == 1 and history[0].stat().st_size > 0
    capsys.readouterr()
    assert main(["runs", "diagnose", str(out), "--out", str(tmp_path / "diag")]) == 0
    found = {f["id"]: f for f in json.loads((tmp_path / "diag" / "diagnosis.json").read_text())}
    # read from the run's logged figures: 2 validation complexes, 2 evaluations in 4 steps
    assert found["small_validation"]["evidence"] == {"n_validation_samples": 2.0,
                                                     "source": "val/n_samples"}  # fmt: skip
    assert found["short_run"]["evidence"]["evaluations"] == 2


def _module_and_data(tiny, tmp_path):
    from moltune.sbdd.train import FinetuneData, FinetuneModule, build_model, load_splits

    cfg = _cfg(tiny, tmp_path / "unused")
    train_items, val_items = load_splits(cfg, tiny["processed"])
    module = FinetuneModule(build_model(cfg), cfg)
    return module, FinetuneData(train_items, val_items, 2, cfg.seed, True), val_items


def test_an_items_diffusion_noise_does_not_depend_on_its_batch(tiny, tmp_path):
    """t and eps of an item come from (seed, stream, epoch, index): the same item alone or
    beside another gets the same draws and the same loss; another epoch, other draws."""
    from moltune.sbdd.train import ComplexDataset, collate

    module, data, _ = _module_and_data(tiny, tmp_path)
    ds = ComplexDataset(data.train)
    both, alone = collate([ds[(3, 0)], ds[(3, 1)]], True), collate([ds[(3, 1)]], True)
    assert both["item_key"].tolist() == [[3, 0], [3, 1]]
    width = 3 + module.model.ddpm.atom_nf
    n0, n1 = both["num_lig_atoms"].tolist()
    like = torch.zeros(1, dtype=torch.float64)
    t_both, eps_both = module.item_draws(both, stream=0)
    t_alone, eps_alone = module.item_draws(alone, stream=0)
    assert int(t_both[1]) == int(t_alone[0])
    np.testing.assert_array_equal(eps_both((n0 + n1, width), like)[n0:],
                                  eps_alone((n1, width), like))  # fmt: skip
    losses = []
    for batch in (both, alone):
        t, noise = module.item_draws(batch, stream=0)
        out = module.model.ddpm.loss(*module.model.ligand_pocket(batch), t_int=t, noise=noise,
                                     film=module.model.film_params(batch["embeddings"],
                                                                   len(t)), training=True)
        losses.append(out.nll.detach())
    assert float(losses[0][1]) == pytest.approx(float(losses[1][0]), rel=1e-5)
    later = collate([ds[(4, 1)]], True)
    _, eps_later = module.item_draws(later, stream=0)
    assert not torch.equal(eps_later((n1, width), like), eps_alone((n1, width), like))


def test_ddp_ranks_draw_and_generate_for_their_own_shards(tiny, tmp_path, gloo_ranks):
    """Two gloo ranks: their training items make up the one-process global batch, each
    validates and generates for its own validation complex, and the gathered generation
    figures are the one-process figures (pocket seeds follow the position in the set)."""
    from moltune.sbdd.evaluation import GenerationEvalCallback

    module, data, val_items = _module_and_data(tiny, tmp_path)
    evaluator = GenerationEvalCallback(val_items, 1, n_samples=2, timesteps=3, seed=0)

    def seen(r=None):
        train_keys = [k for b in data.train_dataloader() for k in b["item_key"].tolist()]
        val_keys = [k for b in data.val_dataloader() for k in b["item_key"].tolist()]
        return train_keys, val_keys, evaluator.rows(module.model)

    one_train, one_val, one_gen = seen()
    assert len(one_val) == 2
    (train0, val0, gen0), (train1, val1, gen1) = gloo_ranks(seen)
    assert train0 and train1 and not {tuple(k) for k in train0} & {tuple(k) for k in train1}
    assert sorted(train0 + train1) == sorted(one_train)
    assert val0 and val1 and val0 + val1 == one_val
    assert len(one_gen) == 4 and sum(bool(r.get("smiles")) for r in one_gen) >= 2
    assert [r["pocket"] for r in one_gen] == [d["name"] for d in val_items for _ in range(2)]
    same = {json.dumps(g, sort_keys=True, default=str) for g in (gen0, gen1, one_gen)}
    assert len(same) == 1  # the same molecules (SMILES, sizes, validity) in the same order


@pytest.mark.slow
def test_film_adapter_under_ddp_trains_like_one_process_and_resumes(tiny, tmp_path):
    """``--devices 2 --strategy ddp`` (gloo, two CPU processes), each rank one complex of every
    global batch of 2: the adapter weights, the losses and the validation figures equal those
    of one process on the same global batch and seed; rank 0 alone writes the run folder, and
    the run resumes under DDP with the earlier rows kept."""
    import os
    import shutil
    import subprocess
    import sys

    from moltune.common.config import to_yaml

    script = shutil.which("moltune")
    if script is None:
        pytest.skip("the moltune console script is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}  # fmt: skip

    def run(name, *flags):
        cfg = tmp_path / f"{name}.yml"
        cfg.write_text(to_yaml(_cfg(tiny, tmp_path / name)))
        r = subprocess.run([sys.executable, script, "sbdd", "train", "--config", str(cfg),
                            "--accelerator", "cpu", *flags], env=env, capture_output=True,
                           text=True, timeout=900, check=False, cwd=tmp_path)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        return tmp_path / name

    one, ddp = run("one", "--devices", "1"), run("ddp", "--devices", "2", "--strategy", "ddp")
    s1 = torch.load(one / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    s2 = torch.load(ddp / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    film = [k for k in s1 if k.startswith("model.film.")]
    assert film and any(s1[k].abs().max() > 0 for k in film if k.endswith("weight"))
    for k in film:
        torch.testing.assert_close(s2[k], s1[k], rtol=1e-4, atol=1e-7)
    m1, m2 = pd.read_csv(one / "metrics.csv"), pd.read_csv(ddp / "metrics.csv")
    for col in ("train/loss", "val/loss", "val/validity", "val/connectivity"):
        a, b = m1[col].dropna().to_numpy(), m2[col].dropna().to_numpy()
        assert len(a) == len(b) > 0, col
        np.testing.assert_allclose(b, a, rtol=1e-4, err_msg=col)
    # each rank validated its own complex: counted once across the ranks, not once per rank
    assert m1["val/n_samples"].dropna().tolist() == m2["val/n_samples"].dropna().tolist() == [2, 2]
    run("ddp", "--devices", "2", "--strategy", "ddp", "--max-steps", "6", "--resume")
    state = torch.load(ddp / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 6
    df = pd.read_csv(ddp / "metrics.csv")
    assert sorted(df.dropna(subset=["train/loss"])["step"].astype(int)) == list(range(6))
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["global_step"] == 6 and (ddp / "checkpoints" / "adapter-last.pt").is_file()
