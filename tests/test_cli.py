"""The ``moltune`` command lists its commands and fails cleanly on bad input."""

import subprocess
import sys

from moltune.cli.main import build_parser


def test_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "moltune.cli.main", "--help"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0
    for command in ("demo", "peptide", "energy", "pt", "runs", "sbdd"):
        assert command in out.stdout


def test_parser_builds():
    parser = build_parser()
    assert parser.prog == "moltune"
