"""FiLM adapter: identity initialisation is an exact no-op, random initialisation is not,
freezing leaves only adapter gradients, per-sample embeddings, adapter-only checkpoints."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from moltune.common.errors import CheckpointError
from moltune.sbdd.diffusion import NoiseReplay
from moltune.sbdd.film import FiLMAdapter, FiLMConfig, load_adapter, save_adapter
from moltune.sbdd.model import LigandDiffusionModel

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
FIXTURE = SHARED / "fixtures" / "diffsbdd"
CKPT = FIXTURE / "random_crossdock_fullatom_cond.ckpt"
COMPLEX = SHARED / "data" / "complexes" / "3rfm"

pytestmark = pytest.mark.skipif(not CKPT.is_file(), reason="DiffSBDD fixture not available")

CONFIGS = {
    "960-128-64": FiLMConfig(hidden_dims=(128,)),
    "960-512-256-64-dropout": FiLMConfig(hidden_dims=(512, 256), dropout=0.2),
}


@pytest.fixture(scope="module")
def base():
    return LigandDiffusionModel.from_checkpoint(CKPT)


def _model(base, film):
    import copy

    m = copy.deepcopy(base)
    m.set_film(film)
    return m


@functools.cache
def _embeddings():
    """Very different embeddings: Gaussian, large, all zeros, and a real provider's if present."""
    g = torch.Generator().manual_seed(3)
    out = {"gauss": torch.randn(2, 960, generator=g), "large": 50 * torch.randn(2, 960, generator=g),
           "zeros": torch.zeros(2, 960)}
    try:
        from moltune.sbdd.data import pocket_from_pdb
        from moltune.sbdd.embeddings import make_provider

        pocket = pocket_from_pdb(COMPLEX / "protein.pdb", ref_ligand_sdf=COMPLEX / "ligand.sdf")
        e = torch.as_tensor(make_provider("deterministic").embed(pocket)).float()
        out["deterministic-provider"] = e[None].expand(2, -1)
    except (ImportError, FileNotFoundError):
        pass
    return out


def _net(model, case, emb):
    return model.denoise(case["z_lig"], case["xh_pocket"], case["t"], case["lig_mask"],
                         case["pocket_mask"], embeddings=emb)


def _loss_case(golden):
    case = golden["loss"][2]  # eval (VLB), two network calls
    call = dict(case["dynamics_calls"][0])
    call["lig_mask"], call["pocket_mask"] = golden["batch"]["lig_mask"], golden["batch"]["pocket_mask"]
    return case, call


def _single_call(golden):
    c = golden["dynamics"][1]  # one sample, t = 250
    return {"z_lig": c["z_t_lig"], "xh_pocket": c["xh_pocket"], "t": c["t"],
            "lig_mask": c["lig_mask"], "pocket_mask": c["pocket_mask"]}


def _single_batch(golden):
    return golden["batch_single"]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_identity_film_equals_no_film(base, golden, name):
    case, _call = _loss_case(golden)
    single = _single_call(golden)
    model = _model(base, CONFIGS[name])
    gamma, beta = model.film(torch.randn(4, 960))
    assert torch.all(gamma == 1.0) and torch.all(beta == 0.0)  # exactly
    with torch.no_grad():
        ref_lig, ref_pocket = _net(base, single, None)
        for label, emb in _embeddings().items():
            out_lig, out_pocket = _net(model, single, emb[:1])
            assert (out_lig - ref_lig).abs().max().item() <= 1e-6, label
            assert (out_pocket - ref_pocket).abs().max().item() <= 1e-6, label
        if name != "960-512-256-64-dropout":
            return
        # Whole loss on the batch of two, train mode (adapter dropout active) and eval mode.
        for train in (True, False):
            base.train(train)
            model.train(train)
            kw = {"t_int": case["t_int"], "noise": NoiseReplay(case["noise_draws"] * 2)}
            a = base(golden["batch"], **kw).nll
            kw = {"t_int": case["t_int"], "noise": NoiseReplay(case["noise_draws"] * 2)}
            b = model(golden["batch"], embeddings=_embeddings()["large"], **kw).nll
            assert (a - b).abs().max().item() <= 1e-6
    base.eval()


def test_random_film_differs_and_is_per_sample(base, golden):
    _, call = _loss_case(golden)
    model = _model(base, FiLMConfig(hidden_dims=(128,), init="random"))
    model.film.eval()
    emb = _embeddings()["gauss"]
    with torch.no_grad():
        ref = _net(base, call, None)[0]
        out = _net(model, call, emb)[0]
        assert (out - ref).abs().max().item() > 1e-3
        # Changing sample 1's embedding leaves sample 0's output untouched, and vice versa.
        emb2 = emb.clone()
        emb2[1] = torch.randn(960)
        out2 = _net(model, call, emb2)[0]
        lig0 = call["lig_mask"] == 0
        assert torch.equal(out2[lig0], out[lig0])
        assert (out2[~lig0] - out[~lig0]).abs().max().item() > 1e-4


def test_freeze_base_only_adapter_gets_gradients(base, golden):
    case, _ = _loss_case(golden)
    model = _model(base, CONFIGS["960-512-256-64-dropout"])
    model.freeze_base()
    model.train()
    out = model(_single_batch(golden), embeddings=_embeddings()["gauss"][:1],
                t_int=torch.tensor([137]), noise=NoiseReplay([case["noise_draws"][0][:14]]))
    out.loss.backward()
    film_names = {n for n, _ in model.named_parameters() if n.startswith("film.")}
    assert film_names
    for n, p in model.named_parameters():
        if n in film_names:
            assert p.requires_grad and p.grad is not None, n
        else:
            assert not p.requires_grad and p.grad is None, n
    # From the identity start, the gradient reaches the last adapter layer (it can learn).
    assert model.film.last.weight.grad.abs().max().item() > 0
    assert model.film.last.bias.grad.abs().max().item() > 0


def test_unfrozen_training_step_keeps_tied_tensors_one(base, golden):
    case, _ = _loss_case(golden)
    model = _model(base, None)
    model.train()
    params = list(model.parameters())
    shared = [model.ddpm.dynamics.egnn._modules[f"e_block_{k}"].gcl_equiv for k in range(5)]
    ids = {id(p) for p in params}
    for blk in shared:
        assert id(blk.coord_mlp[4].weight) in ids
    assert len(params) == len(ids)  # each shared tensor appears once for the optimiser
    opt = torch.optim.SGD(params, lr=0.1)
    out = model(_single_batch(golden), t_int=torch.tensor([137]),
                noise=NoiseReplay([case["noise_draws"][0][:14]]))
    out.loss.backward()
    before = shared[0].coord_mlp[4].weight.detach().clone()
    opt.step()
    sd = model.diffsbdd_state_dict()
    for k, blk in enumerate(shared):
        a = sd[f"ddpm.dynamics.egnn.e_block_{k}.gcl_equiv.coord_mlp.4.weight"]
        b = sd[f"ddpm.dynamics.egnn.e_block_{k}.gcl_equiv.cross_product_mlp.4.weight"]
        assert torch.equal(a, b)
    assert not torch.equal(shared[0].coord_mlp[4].weight, before)


def test_adapter_checkpoint_round_trip(base, golden, tmp_path):
    _, call = _loss_case(golden)
    model = _model(base, FiLMConfig(hidden_dims=(512, 256), dropout=0.1, init="random"))
    model.eval()
    path = model.save_adapter(tmp_path / "adapter.pt", extra={"epoch": 3})
    assert "ddpm" not in "".join(torch.load(path, weights_only=True)["state_dict"])
    emb = _embeddings()["gauss"]
    other = _model(base, None)
    other.load_adapter(path)
    other.eval()
    with torch.no_grad():
        assert torch.equal(_net(model, call, emb)[0], _net(other, call, emb)[0])
    # Not an adapter file, or an adapter for another model width.
    with pytest.raises(CheckpointError, match="not a moltune FiLM adapter"):
        load_adapter(CKPT)
    wide = FiLMAdapter(FiLMConfig(joint_nf=128))
    save_adapter(tmp_path / "wide.pt", wide)
    with pytest.raises(ValueError, match="joint_nf=128"):
        other.load_adapter(tmp_path / "wide.pt")


def test_film_input_checks(base):
    model = _model(base, FiLMConfig())
    with pytest.raises(ValueError, match="embeddings of size 960"):
        model.film(torch.zeros(1, 100))
    with pytest.raises(ValueError, match="NaN"):
        model.film(torch.full((1, 960), float("nan")))
    with pytest.raises(ValueError, match="no FiLM adapter"):
        base.film_params(np.zeros(960, np.float32), 1)
    with pytest.raises(ValueError, match="init must be"):
        FiLMConfig(init="zeros")


def test_generation_with_film_embedding(base, golden):
    from moltune.common.errors import InvalidInputError
    from moltune.sbdd.generate import generate

    class Pocket:
        coords_A = golden["complex"]["pocket_coords_pdb_frame"].double().numpy()
        one_hot = golden["complex"]["pocket_one_hot"].numpy()

    emb = _embeddings()["gauss"][0].numpy()
    kw = {"n_samples": 2, "num_atoms": 6, "timesteps": 2, "seed": 3, "progress": False}
    plain = generate(base, Pocket, **kw)
    ident = generate(_model(base, FiLMConfig()), Pocket, embedding=emb, **kw)
    rand = generate(_model(base, FiLMConfig(init="random")), Pocket, embedding=emb, **kw)
    for a, b, c in zip(plain.ligands, ident.ligands, rand.ligands):
        assert np.abs(a.coords_A - b.coords_A).max() <= 1e-6
        assert np.array_equal(a.atom_type_index, b.atom_type_index)
        assert np.abs(a.coords_A - c.coords_A).max() > 1e-3
    with pytest.raises(InvalidInputError, match="give a pocket embedding"):
        generate(_model(base, FiLMConfig()), Pocket, **kw)
