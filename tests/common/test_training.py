"""The shared training lifecycle: run-folder checks, hardware settings, data root, sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moltune.common.errors import CheckpointError, InputFileError, InvalidInputError
from moltune.common.training import (
    EpochShardSampler,
    TrainerConfig,
    check_run_folder,
    check_trainer_config,
    data_root,
    lr_factor,
    missing_data,
    refuse_missing_data,
    resolve_data,
)  # fmt: skip


def test_epoch_shard_sampler_splits_each_global_batch_between_ranks(monkeypatch):
    import moltune.common.training as tr

    n, batch = 23, 4  # 5 whole global batches of 4; 3 items left over
    one = EpochShardSampler(n, seed=5, per_rank_batch=batch)
    one.set_epoch(2)
    single = [k for _, k in one]
    assert len(single) == 20 and len(set(single)) == 20
    ranks = []
    for r in (0, 1):
        monkeypatch.setattr(tr, "world", lambda r=r: (r, 2))
        s = EpochShardSampler(n, seed=5, per_rank_batch=batch // 2)
        s.set_epoch(2)
        ranks.append([k for _, k in s])
    assert not set(ranks[0]) & set(ranks[1])  # the ranks see different items
    for b in range(5):  # together, batch b of the two ranks is the one-process batch b
        together = ranks[0][2 * b: 2 * b + 2] + ranks[1][2 * b: 2 * b + 2]
        assert sorted(together) == sorted(single[4 * b: 4 * b + 4])
    monkeypatch.setattr(tr, "world", lambda: (0, 1))
    other = EpochShardSampler(n, seed=5, per_rank_batch=batch)
    other.set_epoch(3)  # another epoch, another order
    assert [k for _, k in other] != single


def test_validation_shards_and_gather_between_two_gloo_ranks(gloo_ranks):
    """Each rank validates its own block (none twice, none left out, in order), and gather
    hands every rank every rank's results in rank order; one process validates everything."""
    from moltune.common.training import ShardSampler, gather, world

    assert list(ShardSampler(7)) == list(range(7)) and gather("x") == ["x"]

    def rank(r):
        assert world() == (r, 2)
        mine = list(ShardSampler(7))
        with pytest.raises(InvalidInputError, match="1 validation item"):
            len(ShardSampler(1))  # one item cannot give both ranks a batch
        return mine, gather(mine), gather({"rank": r, "n": len(mine)})

    (a, gathered_a, meta_a), (b, gathered_b, meta_b) = gloo_ranks(rank)
    assert a and b and not set(a) & set(b) and abs(len(a) - len(b)) <= 1
    assert a + b == list(range(7))
    assert gathered_a == gathered_b == [a, b]
    assert meta_a == meta_b == [{"rank": 0, "n": len(a)}, {"rank": 1, "n": len(b)}]


def test_check_run_folder_creates_nothing_and_refuses_a_damaged_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert check_run_folder(out, resume=False) is None and not out.exists()
    with pytest.raises(InputFileError, match="does not exist"):
        check_run_folder(out, resume=True)
    (out / "checkpoints").mkdir(parents=True)
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(b"truncated")
    with pytest.raises(InvalidInputError, match="already holds a run"):
        check_run_folder(out, resume=False)
    with pytest.raises(CheckpointError, match="damaged"):
        check_run_folder(out, resume=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "global_step": 3}, last)
    assert check_run_folder(out, resume=True) == last
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="is a file"):
        check_run_folder(tmp_path / "file", resume=False)


@pytest.mark.parametrize("kw,word", [
    ({"accelerator": "tpu9"}, "accelerator"), ({"devices": 0}, "devices"),
    ({"devices": "two"}, "devices"), ({"num_nodes": 0}, "num_nodes"),
    ({"precision": "8-true"}, "precision"), ({"logger": ["mlflow"]}, "logger"),
    ({"wandb_mode": "cloud"}, "wandb_mode"),
])  # fmt: skip
def test_trainer_config_refuses_nonsense(kw, word):
    with pytest.raises(InvalidInputError, match=word):
        check_trainer_config(TrainerConfig(**kw))


def test_trainer_config_accepts_the_documented_forms():
    for kw in ({}, {"devices": 2, "strategy": "ddp"}, {"devices": [0, 1]}, {"devices": "2"},
               {"precision": "bf16-mixed", "accelerator": "cpu"}, {"logger": ["tensorboard"]}):
        check_trainer_config(TrainerConfig(**kw))


def test_data_root_and_missing_data_name_the_simulate_command(tmp_path, monkeypatch):
    monkeypatch.delenv("MOLTUNE_DATA", raising=False)
    assert str(data_root()) == "data"
    monkeypatch.setenv("MOLTUNE_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data("/abs/x", tmp_path) == "/abs/x"
    assert resolve_data("aa_pt_train", tmp_path) == str(tmp_path / "aa_pt_train")
    (tmp_path / "have").mkdir()
    folders = [resolve_data(n, tmp_path) for n in ("have", "aa_pt_train")]
    missing = missing_data(folders, {"aa_pt_train": "--peptide AA --time-ns 2 --seed 1"}, tmp_path)
    assert missing == [(tmp_path / "aa_pt_train", "--peptide AA --time-ns 2 --seed 1")]
    with pytest.raises(InputFileError) as exc:
        refuse_missing_data(missing)
    assert (f"`moltune pt simulate --peptide AA --time-ns 2 --seed 1 --out "
            f"{tmp_path / 'aa_pt_train'}`") in str(exc.value)
    with pytest.raises(InputFileError, match="not found"):  # no recipe for it
        missing_data([str(tmp_path / "other")], {}, tmp_path)


def test_lr_factor_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, 4, 20, "cosine", 0.1) for s in range(25)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == pytest.approx(1.0) and f[12] == pytest.approx(0.1 + 0.9 * 0.5)
    assert f[20] == pytest.approx(0.1) and f[24] == pytest.approx(0.1)
    assert np.all(np.diff(f[4:21]) < 0)
    assert lr_factor(10, 4, 20, "constant") == 1.0


def test_config_errors_are_one_line_user_errors(tmp_path):
    from moltune.common.config import load_config
    from moltune.common.errors import UserError
    from moltune.flow.train import TrainConfig

    bad = tmp_path / "bad.yml"
    bad.write_text("a: [1,\n")
    for preset, word in ((bad, "not valid YAML"), ("no_such_preset", "known presets")):
        with pytest.raises(UserError, match=word):
            load_config(TrainConfig, preset)
    unknown = tmp_path / "u.yml"
    unknown.write_text("trainer: {acelerator: gpu}\n")
    with pytest.raises(KeyError, match="acelerator") as exc:
        load_config(TrainConfig, unknown)
    assert isinstance(exc.value, UserError) and not str(exc.value).startswith("'")


def test_one_console_line_per_lightning_message(capsys):
    import io
    import logging

    import lightning as L

    from moltune.common.training import one_console_line

    root, buf = logging.getLogger(), io.StringIO()
    handler = logging.StreamHandler(buf)
    names = ("lightning", "lightning.pytorch", "lightning.fabric")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate,
                 logging.getLogger(n).level) for n in names}  # fmt: skip
    for n in names:  # another test module may have quietened Lightning
        logging.getLogger(n).setLevel(logging.INFO)
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        one_console_line()
        L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False)  # fmt: skip
        text = buf.getvalue() + capsys.readouterr().err
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for n, (handlers, propagate, lvl) in saved.items():
            logging.getLogger(n).handlers[:] = handlers
            logging.getLogger(n).propagate = propagate
            logging.getLogger(n).setLevel(lvl)
    assert text.count("GPU available") == 1


def test_no_preset_or_default_names_a_machine_folder():
    import dataclasses
    from importlib import resources

    import yaml

    from moltune.flow.train import TrainConfig
    from moltune.sbdd.standin import StandinConfig
    from moltune.sbdd.train import FinetuneConfig

    def strings(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield str(k)
                yield from strings(v)
        elif isinstance(obj, list):
            for v in obj:
                yield from strings(v)
        elif isinstance(obj, str):
            yield obj

    files = [f for f in resources.files("moltune.presets").iterdir() if f.name.endswith(".yml")]
    assert len(files) >= 9
    for f in files:
        text = f.read_text()
        found = [s for s in strings(yaml.safe_load(text)) if s.startswith(("/", "~", ".."))]
        assert not found and "/work/" not in text and "../" not in text, (f.name, found)
    for cfg in (TrainConfig(), StandinConfig(), FinetuneConfig()):
        found = [s for s in strings(dataclasses.asdict(cfg)) if s.startswith(("/", "~", ".."))]
        assert not found, found
