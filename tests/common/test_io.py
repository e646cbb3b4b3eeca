"""Atomic writes give a file the permissions a plain write would, and refuse unwritable places."""

import os
import stat

import numpy as np
import pytest

from moltune.common.errors import OutputPathError
from moltune.common.io import save_npy, save_npz, torch_save, write_json, write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o002])
def test_new_files_get_the_umask_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
        expected = _mode(tmp_path / "plain.txt")
        write_text(tmp_path / "a.txt", "x")
        write_json(tmp_path / "b.json", {"a": 1})
        save_npy(tmp_path / "c.npy", np.zeros(3))
        save_npz(tmp_path / "d.npz", x=np.zeros(3))
        torch_save(tmp_path / "e.pt", {"w": 1})
    finally:
        os.umask(old)
    assert expected == 0o666 & ~umask
    for name in ("a.txt", "b.json", "c.npy", "d.npz", "e.pt"):
        assert _mode(tmp_path / name) == expected, name


def test_rewriting_keeps_an_existing_files_permissions(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"a": 1})
    os.chmod(target, 0o640)
    write_json(target, {"a": 2})
    assert _mode(target) == 0o640
    assert target.read_text().count("2") == 1


def test_unwritable_place_is_a_user_error_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    with pytest.raises(OutputPathError, match="cannot write"):
        write_json(blocker / "x.json", {"a": 1})
    with pytest.raises(OutputPathError, match="cannot write"):
        write_text(tmp_path, "x")  # a folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert blocker.read_text() == "mine"
