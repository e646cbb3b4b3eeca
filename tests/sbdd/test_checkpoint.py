"""Safe checkpoint loading: weights-only, clear errors for other layouts and non-checkpoints,
and a DiffSBDD-layout round trip that keeps the tied tensors."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from moltune.common.errors import CheckpointError, InputFileError
from moltune.sbdd.checkpoint import load_checkpoint, read_checkpoint_file
from moltune.sbdd.model import LigandDiffusionModel

FIXTURE = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "diffsbdd"
CKPT = FIXTURE / "random_crossdock_fullatom_cond.ckpt"

pytestmark = pytest.mark.skipif(not CKPT.is_file(), reason="DiffSBDD fixture not available")

TIED = "ddpm.dynamics.egnn.e_block_{k}.gcl_equiv.{which}_mlp.4.weight"


@pytest.fixture(scope="module")
def raw():
    """The fixture checkpoint as a dict (read once; tests modify copies only)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(CKPT, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def golden_case():
    g = torch.load(FIXTURE / "golden_io.pt", weights_only=True)
    return g["dynamics"][1]


def _save_modified(tmp_path: Path, raw: dict, name: str, edit) -> Path:
    obj = dict(raw)
    obj["state_dict"] = dict(raw["state_dict"])
    obj["hyper_parameters"] = dict(raw["hyper_parameters"])
    edit(obj)
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _out(model, case):
    with torch.no_grad():
        return model.ddpm.dynamics(case["z_t_lig"], case["xh_pocket"], case["t"],
                                   case["lig_mask"], case["pocket_mask"])[0]


def test_default_weights_only_load_refuses_but_ours_reads(raw):
    with pytest.raises(pickle.UnpicklingError):
        torch.load(CKPT, map_location="cpu", weights_only=True)
    ck = load_checkpoint(CKPT)
    assert ck.hyper_parameters["egnn_params"]["joint_nf"] == 32  # Namespace -> dict
    assert isinstance(ck.raw_hyper_parameters["egnn_params"], argparse.Namespace)
    assert len(ck.state_dict) == 122


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        LigandDiffusionModel.from_checkpoint(path)
    assert not marker.exists()


RANDOM_BYTES = [np.random.default_rng(s).bytes(256) for s in range(200)]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n", *RANDOM_BYTES[:1]])
def test_not_a_checkpoint_file(tmp_path, content):
    path = tmp_path / "junk.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        LigandDiffusionModel.from_checkpoint(path)


def test_random_bytes_always_give_a_checkpoint_error(tmp_path):
    """About 5% of random files made the unpickler raise IndexError, which escaped as a crash."""
    path = tmp_path / "junk.ckpt"
    for content in RANDOM_BYTES:
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match="junk.ckpt"):
            read_checkpoint_file(path)


def test_torch_file_without_checkpoint_structure(tmp_path):
    p1 = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], p1)
    with pytest.raises(CheckpointError, match="top level is a list"):
        load_checkpoint(p1)
    p2 = tmp_path / "weights_only.pt"
    torch.save({"weight": torch.zeros(3)}, p2)
    with pytest.raises(CheckpointError, match=r"missing top-level key\(s\) \['state_dict', "
                                              r"'hyper_parameters'\]"):
        load_checkpoint(p2)


def test_missing_file():
    with pytest.raises(InputFileError, match="does not exist"):
        LigandDiffusionModel.from_checkpoint("/nonexistent/model.ckpt")


def test_shape_mismatch_is_named(tmp_path, raw):
    # The original full-atom preprocessing's 11-column one-hot: the encoder input is wider.
    key = "ddpm.dynamics.atom_encoder.0.weight"
    path = _save_modified(tmp_path, raw, "wide.ckpt",
                          lambda o: o["state_dict"].__setitem__(key, torch.zeros(20, 11)))
    with pytest.raises(CheckpointError) as err:
        LigandDiffusionModel.from_checkpoint(path)
    msg = str(err.value)
    assert key in msg and "(20, 11)" in msg and "(20, 10)" in msg and "wide.ckpt" in msg


def test_missing_and_unexpected_keys_are_named(tmp_path, raw):
    gone = "ddpm.dynamics.egnn.e_block_3.gcl_0.att_mlp.0.bias"

    def edit(o):
        del o["state_dict"][gone]
        o["state_dict"]["ddpm.dynamics.egnn.e_block_5.gcl_0.att_mlp.0.bias"] = torch.zeros(1)

    path = _save_modified(tmp_path, raw, "keys.ckpt", edit)
    with pytest.raises(CheckpointError) as err:
        LigandDiffusionModel.from_checkpoint(path)
    msg = str(err.value)
    assert "1 missing key(s): " + gone in msg
    assert "1 unexpected key(s): ddpm.dynamics.egnn.e_block_5.gcl_0.att_mlp.0.bias" in msg


def test_hyper_parameters_of_the_config_file_do_not_fit_the_weights(tmp_path, raw):
    """DiffSBDD's shipped config (joint_nf 128, hidden 256, 6 layers) != the released weights."""

    def edit(o):
        e = vars(o["hyper_parameters"]["egnn_params"]).copy()
        e.update(joint_nf=128, hidden_nf=256, n_layers=6)
        o["hyper_parameters"]["egnn_params"] = argparse.Namespace(**e)

    path = _save_modified(tmp_path, raw, "cfg.ckpt", edit)
    with pytest.raises(CheckpointError) as err:
        LigandDiffusionModel.from_checkpoint(path)
    msg = str(err.value)
    assert "shape mismatch" in msg and "ddpm.dynamics.atom_encoder.2.weight" in msg
    assert "missing key(s): ddpm.dynamics.egnn.e_block_5" in msg


def test_unsupported_mode_and_untied_tensors(tmp_path, raw):
    path = _save_modified(tmp_path, raw, "joint.ckpt",
                          lambda o: o["hyper_parameters"].__setitem__("mode", "joint"))
    with pytest.raises(CheckpointError, match="mode='joint'"):
        LigandDiffusionModel.from_checkpoint(path)

    a, b = TIED.format(k=2, which="coord"), TIED.format(k=2, which="cross_product")
    path = _save_modified(tmp_path, raw, "untied.ckpt",
                          lambda o: o["state_dict"].__setitem__(b, o["state_dict"][a] + 1e-3))
    with pytest.raises(CheckpointError, match="must be one shared tensor"):
        LigandDiffusionModel.from_checkpoint(path)


def test_diffsbdd_layout_round_trip_keeps_tied_tensors(tmp_path, raw, golden_case):
    model = LigandDiffusionModel.from_checkpoint(CKPT)
    before = _out(model, golden_case)
    # A fine-tuning step on the shared last coordinate layer changes both names at once.
    blk = model.ddpm.dynamics.egnn.e_block_0.gcl_equiv
    with torch.no_grad():
        blk.coord_mlp[4].weight.add_(0.01)
    assert torch.equal(blk.coord_mlp[4].weight, blk.cross_product_mlp[4].weight)
    path = model.save_diffsbdd_checkpoint(tmp_path / "rt.ckpt")

    saved = read_checkpoint_file(path)
    sd = saved["state_dict"]
    assert list(sd) == list(raw["state_dict"])  # same names, same order, both tied names
    a, b = TIED.format(k=0, which="coord"), TIED.format(k=0, which="cross_product")
    assert torch.equal(sd[a], sd[b])
    assert torch.equal(sd[a], raw["state_dict"][a] + 0.01)
    assert isinstance(saved["hyper_parameters"]["egnn_params"], argparse.Namespace)

    again = LigandDiffusionModel.from_checkpoint(path)
    assert torch.equal(_out(again, golden_case), _out(model, golden_case))
    assert not torch.equal(_out(again, golden_case), before)
    for k in range(5):
        g = again.ddpm.dynamics.egnn._modules[f"e_block_{k}"].gcl_equiv
        assert g.coord_mlp[4].weight is g.cross_product_mlp[4].weight
