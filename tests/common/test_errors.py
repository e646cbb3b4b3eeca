"""The shared checks of user input: numbers, input files, output paths."""

import argparse

import pytest

from moltune.common.errors import (
    InputFileError,
    InvalidInputError,
    OutputPathError,
    check_number,
    check_output_dir,
    check_output_file,
    check_pdb_file,
    check_sdf_file,
    number,
)


def test_number_parses_and_bounds():
    spacing = number(float, above=0, maximum=2.0)
    assert spacing("0.375") == 0.375 and spacing("2") == 2.0
    for text, words in (("0", "> 0"), ("2.5", "<= 2"), ("nan", "finite"), ("inf", "finite"),
                        ("abc", "a number")):
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            spacing(text)
    with pytest.raises(argparse.ArgumentTypeError, match="an integer"):
        number(int, minimum=1)("1.5")
    assert check_number("--x", None, minimum=1) is None  # unset options pass
    with pytest.raises(InvalidInputError, match=r"--n-boot must be >= 40, got 0"):
        check_number("--n-boot", 0, minimum=40)
    with pytest.raises(InvalidInputError, match="< 1"):
        check_number("--val-fraction", 1.0, minimum=0, below=1)


def test_input_file_checks(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        check_pdb_file(tmp_path / "no.pdb")
    (tmp_path / "e.pdb").write_text("")
    with pytest.raises(InvalidInputError, match="is empty"):
        check_pdb_file(tmp_path / "e.pdb")
    (tmp_path / "b.sdf").write_bytes(b"\x00\x01M  END")
    with pytest.raises(InvalidInputError, match="binary"):
        check_sdf_file(tmp_path / "b.sdf")
    (tmp_path / "ok.pdb").write_text("ATOM      1  N   ALA A   1       0.000   0.000   0.000\n")
    assert check_pdb_file(tmp_path / "ok.pdb") == tmp_path / "ok.pdb"


def test_output_path_checks(tmp_path):
    (tmp_path / "f").write_text("x")
    assert check_output_file(tmp_path / "new" / "deeper" / "a.json").name == "a.json"
    assert not (tmp_path / "new").exists()  # a check creates nothing
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(OutputPathError, match="not a folder"):
        check_output_file(tmp_path / "f" / "a.json")
    with pytest.raises(OutputPathError, match="also an input"):
        check_output_file(tmp_path / "." / "f", inputs=(tmp_path / "f",))
    with pytest.raises(OutputPathError, match="is a file"):
        check_output_dir(tmp_path / "f")
    assert check_output_dir(tmp_path / "run") == tmp_path / "run"
