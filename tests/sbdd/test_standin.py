"""Stand-in training options: the x0-error measurement, coordinate normalisation overrides,
the constant learning rate and checkpoint selection by x0 error (tiny models, real complexes)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
COMPLEXES = SHARED / "data" / "complexes"
SPLIT = {"3rfm": "train", "1fbh": "val"}
TINY = {"hidden_nf": 16, "n_layers": 1, "edge_cutoff_pocket": 0.5}

pytestmark = pytest.mark.skipif(not COMPLEXES.is_dir(), reason="shared complexes not available")


@pytest.fixture(scope="module")
def tiny(tiny_sbdd_factory):
    return tiny_sbdd_factory(SPLIT, "sbdd_standin")


def _model(tiny, norm=None, **egnn):
    from moltune.sbdd.standin import StandinConfig, build_model, load_items

    items = load_items(tiny["processed"], ["train", "val"], ["3rfm"])
    cfg = StandinConfig(egnn_overrides=TINY | egnn,
                        diffusion_overrides={"normalize_factors": norm} if norm else {})
    return build_model(cfg, items), items


@pytest.mark.parametrize("norm", [None, [0.25, 4]])
def test_x0_error_of_an_untrained_model_is_the_noise_level(tiny, norm):
    """At initialisation the coordinate output is ~0 (last layer gain 1e-3), so the predicted
    clean ligand is z_t / alpha_t and its error is the noise: sqrt(3 (N-1)/N) sigma_t / alpha_t
    in network units, times the coordinate factor in Å (ligand-centred noise)."""
    from moltune.sbdd.diffusion import alpha, sigma
    from moltune.sbdd.standin import x0_error

    model, items = _model(tiny, norm)
    err = x0_error(model, items, t_values=(20, 100, 300), n_copies=32)
    n = len(items[0]["lig_coords"])
    scale = norm[0] if norm else 1.0
    for t, e in err.items():
        g = model.ddpm.gamma(torch.tensor([[t / model.ddpm.T]]))
        naive = math.sqrt(3 * (n - 1) / n) * float(sigma(g) / alpha(g)) * scale
        assert e == pytest.approx(naive, rel=0.12), (t, e, naive)
    assert err[20] < err[100] < err[300]


def test_normalize_factors_override_keeps_layout_and_samples_in_angstrom(tiny, tmp_path):
    """A stand-in whose network sees x / 0.25: same state-dict keys and shapes as the published
    layout, the factor travels in the checkpoint, and sampled ligands come back in Å around the
    pocket centre (where the sampler puts their centre of mass)."""
    from moltune.sbdd.checkpoint import load_checkpoint, save_checkpoint
    from moltune.sbdd.evaluation import generate_for_pockets

    plain, items = _model(tiny)
    scaled, _ = _model(tiny, [0.25, 4], edge_cutoff_interaction=20.0)
    a, b = plain.diffsbdd_state_dict(), scaled.diffsbdd_state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    path = save_checkpoint(tmp_path / "scaled.ckpt", b, scaled.hyper_parameters)
    ck = load_checkpoint(path)
    assert ck.hyper_parameters["diffusion_params"]["normalize_factors"] == [0.25, 4]
    from moltune.sbdd.model import LigandDiffusionModel

    model = LigandDiffusionModel.from_checkpoint(ck).eval()
    assert model.ddpm.norm_values == (0.25, 4.0)
    (_, ligs), = generate_for_pockets(model, items, 2, timesteps=5, seed=0)
    pocket_com = np.asarray(items[0]["pocket_coords"]).mean(0)
    n = len(items[0]["lig_coords"])
    for lig in ligs:
        assert lig.coords_A.shape == (n, 3)
        # the prior's centre of mass is the pocket's plus the mean of n unit draws (DiffSBDD),
        # 0.25 / sqrt(n) Å per coordinate here: within 5 of those
        np.testing.assert_allclose(lig.coords_A.mean(0), pocket_com, atol=5 * 0.25 / np.sqrt(n))
        assert np.isfinite(lig.coords_A).all()


def test_unknown_diffusion_override_is_refused():
    from moltune.common.errors import InvalidInputError
    from moltune.sbdd.standin import standin_hparams

    with pytest.raises(InvalidInputError, match="diffusion_steps"):
        standin_hparams(diffusion_overrides={"diffusion_steps": 100})


def test_constant_schedule_and_selection_by_x0_error(tiny, tmp_path):
    from moltune.sbdd.checkpoint import load_checkpoint
    from moltune.sbdd.standin import StandinConfig, lr_at, train_standin

    cfg = StandinConfig(data=str(tiny["processed"]), out=str(tmp_path / "sel"),
                        complexes=["3rfm"], steps=4, batch_size=2, save_every=2, warmup_steps=1,
                        lr=1e-2, lr_schedule="constant", ema_decay=0.5, x0_every=2,
                        x0_t=[50, 200], select="x0", eval_n_samples=1, eval_timesteps=2,
                        threads=1, egnn_overrides=TINY)
    assert [lr_at(s, cfg) for s in range(4)] == [1e-2] * 4
    res = train_standin(cfg, progress=False)
    run = tmp_path / "sel"
    rows = (run / "x0_error.csv").read_text().splitlines()
    assert rows[0] == "step,x0_error_A_t50,x0_error_A_t200"
    table = np.array([[float(v) for v in r.split(",")] for r in rows[1:]])
    assert table[:, 0].tolist() == [2, 4]
    best_row = table[np.argmin(table[:, 1:].mean(1))]
    chosen = load_checkpoint(run / "checkpoints" / "standin.ckpt")
    best = load_checkpoint(run / "checkpoints" / "best.ckpt")
    assert chosen.meta["global_step"] == int(best_row[0]) == res["selected_step"]
    for k, v in best.state_dict.items():
        assert torch.equal(v, chosen.state_dict[k]), k
    assert res["x0_error_A"][50] == pytest.approx(best_row[1], rel=1e-4)
    assert "sha256" in (run / "report.md").read_text()
    assert len(res["checkpoint_sha256"]) == 64


def test_bad_schedule_name_is_refused(tiny, tmp_path):
    from moltune.common.errors import InvalidInputError
    from moltune.sbdd.standin import StandinConfig, train_standin

    cfg = StandinConfig(data=str(tiny["processed"]), out=str(tmp_path / "bad"),
                        lr_schedule="linear", egnn_overrides=TINY)
    with pytest.raises(InvalidInputError, match="lr_schedule"):
        train_standin(cfg, progress=False)


def test_multi_pocket_preset_is_the_standin_recipe_warm_started():
    """sbdd_standin_multi differs from sbdd_standin only in what it memorises, where it starts
    and how long it trains: a silent drift of the recipe would break the warm start."""
    import dataclasses

    from moltune.common.config import load_config
    from moltune.sbdd.standin import StandinConfig

    one = dataclasses.asdict(load_config(StandinConfig, "sbdd_standin"))
    multi = dataclasses.asdict(load_config(StandinConfig, "sbdd_standin_multi"))
    differ = {k for k in one if one[k] != multi[k]}
    assert differ <= {"complexes", "init", "steps", "x0_every"}
    assert one["complexes"] == ["3rfm"] and set(multi["complexes"]) == {"3rfm", "1uw6", "1w1p"}
    assert one["init"] == "scratch" and multi["init"].endswith("standin.ckpt")


def test_standin_presets_name_their_complexes_under_the_data_root(tmp_path, monkeypatch, capsys):
    """The presets name ``complexes`` under ``--data-root`` / $MOLTUNE_DATA; without the data
    the command stops with one line saying what to put there, creating nothing."""
    from moltune.cli.main import main
    from moltune.common.config import load_config
    from moltune.sbdd.data import sbdd_data
    from moltune.sbdd.standin import StandinConfig

    for preset in ("sbdd_standin", "sbdd_standin_multi"):
        cfg = load_config(StandinConfig, preset, data_root=str(SHARED / "data"))
        assert sbdd_data(cfg.data, cfg.data_root) == SHARED / "data" / "complexes"
    monkeypatch.setenv("MOLTUNE_DATA", str(SHARED / "data"))
    assert sbdd_data(load_config(StandinConfig, "sbdd_standin").data) == COMPLEXES
    out = tmp_path / "run"
    rc = main(["sbdd", "standin", "--preset", "sbdd_standin", "--data-root", str(tmp_path),
               "--out", str(out), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(tmp_path / "complexes") in err and "moltune sbdd process" in err
    assert not out.exists()
