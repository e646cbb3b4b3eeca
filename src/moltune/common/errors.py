"""Errors a user can fix (bad input, missing file, wrong layout), and the checks that raise them.

The CLI prints them as one line and exits with status 2; library callers can catch them.
Subclasses also derive from the matching builtin so ``except ValueError`` still works.
Every command checks its numbers, input files and output paths with the helpers below before
any expensive work, so a refused command creates or changes nothing.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


class UserError(Exception):
    """Something about the user's input is wrong; the message says what and how to fix it."""


class InputFileError(UserError, FileNotFoundError):
    """A required file is missing or unreadable."""


class InvalidInputError(UserError, ValueError):
    """Input data is malformed (NaN coordinates, wrong shape, unknown residue, ...)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint has the wrong layout or is not a checkpoint."""


class OutputPathError(UserError, OSError):
    """An output path cannot be written (a folder, a read-only place, a file in the way)."""


# ------------------------------------------------------------------------------------- numbers
def _number_problem(value, minimum=None, maximum=None, above=None, below=None) -> str | None:
    """What is wrong with ``value`` for these bounds (None when nothing)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if minimum is not None and value < minimum:
        return f"must be >= {minimum:g}, got {value:g}"
    if above is not None and value <= above:
        return f"must be > {above:g}, got {value:g}"
    if maximum is not None and value > maximum:
        return f"must be <= {maximum:g}, got {value:g}"
    if below is not None and value >= below:
        return f"must be < {below:g}, got {value:g}"
    return None


def check_number(name: str, value, minimum=None, maximum=None, above=None, below=None):
    """``value`` if it is finite and within the bounds (inclusive min/max, exclusive above/below),
    else InvalidInputError naming ``name``."""
    if value is None:
        return value
    problem = _number_problem(value, minimum, maximum, above, below)
    if problem:
        raise InvalidInputError(f"{name} {problem}")
    return value


def number(kind: type = float, minimum=None, maximum=None, above=None, below=None):
    """argparse ``type=`` for a finite int/float within bounds: a bad value is a usage error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        problem = _number_problem(value, minimum, maximum, above, below)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = number(int, minimum=1)
nonnegative_int = number(int, minimum=0)
positive_float = number(float, above=0)
nonnegative_float = number(float, minimum=0)
finite_float = number(float)


# --------------------------------------------------------------------------------- input files
def check_input_file(path, what: str = "file") -> Path:
    """``path`` as a Path if it is an existing, readable, non-empty file."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{what} not found: {p}")
    if not p.is_file():
        raise InputFileError(f"{what} {p} is not a file")
    if not os.access(p, os.R_OK):
        raise InputFileError(f"{what} {p} is not readable")
    if p.stat().st_size == 0:
        raise InvalidInputError(f"{what} {p} is empty")
    return p


def _text_head(p: Path, what: str) -> str:
    try:
        return p.read_bytes()[: 1 << 24].decode("utf-8", errors="replace")
    except OSError as exc:
        raise InputFileError(f"cannot read {what} {p}: {exc.strerror}") from exc


def check_pdb_file(path, what: str = "PDB file") -> Path:
    """A readable PDB file with at least one ATOM/HETATM record."""
    p = check_input_file(path, what)
    text = _text_head(p, what)
    if "\0" in text:
        raise InvalidInputError(f"{what} {p} is binary, not a PDB file")
    if not any(line.startswith(("ATOM  ", "HETATM")) for line in text.splitlines()):
        raise InvalidInputError(f"{what} {p} has no ATOM or HETATM records; is it a PDB file?")
    return p


def check_sdf_file(path, what: str = "SDF file") -> Path:
    """A readable SDF (or MOL) file with at least one molecule block (a ``M  END`` line)."""
    p = check_input_file(path, what)
    text = _text_head(p, what)
    if "\0" in text:
        raise InvalidInputError(f"{what} {p} is binary, not an SDF file")
    if not any(line.startswith("M  END") for line in text.splitlines()):
        raise InvalidInputError(f"{what} {p} holds no molecule (no 'M  END' line); "
                                "is it an SDF file?")
    return p


# -------------------------------------------------------------------------------- output paths
def _check_creatable(folder: Path, name: str, target: Path) -> None:
    """``folder`` exists as a writable folder or could be created."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():
            raise OutputPathError(f"{name} {target}: {existing} is a broken link")
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{name} {target}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{name} {target}: folder {existing} is not writable")


def check_output_file(path, name: str = "--out", inputs=()) -> Path:
    """``path`` as a Path if a file can be written there (not a folder; its folder writable;
    none of the command's ``inputs``, which an output must never replace)."""
    p = Path(path)
    for other in inputs:
        if other is not None and p.resolve() == Path(other).resolve():
            raise OutputPathError(f"{name} {p} is also an input of this command; give another path")
    if p.is_dir():
        raise OutputPathError(f"{name} {p} is a folder; give a file path")
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputPathError(f"{name} {p} exists and is not writable")
    _check_creatable(p.parent, name, p)
    return p


def check_output_dir(path, name: str = "--out") -> Path:
    """``path`` as a Path if it is a writable folder or one could be created there."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{name} {p} is a file; give a folder")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise OutputPathError(f"{name} {p}: folder is not writable")
    else:
        _check_creatable(p.parent, name, p)
    return p
