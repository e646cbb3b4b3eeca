"""The ``moltune`` command: a thin layer that parses flags and calls library functions.

Each area registers its subcommands from its own module (``peptide``, ``energy``, ``pt``,
``demo``, ``runs``, ``sbdd``), imports heavy libraries only when a command runs, and turns
``moltune.common.errors.UserError`` into a one-line message and exit status 2.
"""
