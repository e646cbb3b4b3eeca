"""Errors a user can fix (bad input, missing file, wrong layout).

The CLI prints them as one line and exits with status 2; library callers can catch them.
Subclasses also derive from the matching builtin so ``except ValueError`` still works.
"""


class UserError(Exception):
    """Something about the user's input is wrong; the message says what and how to fix it."""


class InputFileError(UserError, FileNotFoundError):
    """A required file is missing or unreadable."""


class InvalidInputError(UserError, ValueError):
    """Input data is malformed (NaN coordinates, wrong shape, unknown residue, ...)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint has the wrong layout or is not a checkpoint."""
