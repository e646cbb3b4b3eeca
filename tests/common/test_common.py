"""Atomic writes and typed configs."""

from dataclasses import dataclass, field

import numpy as np
import pytest

from moltune.common.config import from_dict, merge
from moltune.common.io import atomic_path, save_npz, write_json


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "data.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-written")
        raise RuntimeError("interrupted")
    assert target.read_text().strip().startswith("{")
    assert list(tmp_path.iterdir()) == [target]


def test_save_npz_roundtrip(tmp_path):
    save_npz(tmp_path / "x.npz", xyz=np.arange(6.0).reshape(2, 3))
    assert np.load(tmp_path / "x.npz")["xyz"][1, 2] == 5.0


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10


@dataclass
class Outer:
    name: str = "run"
    inner: Inner = field(default_factory=Inner)


def test_config_merge_nested_and_rejects_unknown_keys():
    cfg = merge(Outer(), {"inner": {"lr": 0.5}, "name": None})
    assert cfg.inner.lr == 0.5 and cfg.inner.steps == 10 and cfg.name == "run"
    with pytest.raises(KeyError, match="lrr"):
        from_dict(Outer, {"inner": {"lrr": 1.0}})
