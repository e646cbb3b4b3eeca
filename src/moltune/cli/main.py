"""Entry point of the ``moltune`` command."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (module under moltune.cli, registers these top-level commands)
AREAS = ("demo", "peptide", "energy", "pt", "runs", "sbdd")


class UsageError(SystemExit):
    """A command line argparse refused (unknown option, bad value): exit status 2 and one line
    (``main`` prints ``message``); a SystemExit as argparse's own, for direct parse_args callers."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (``PROG: error: ...``) and exit status 2."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="moltune",
        description="Train molecular generative models and check whether they work.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for area in AREAS:
        importlib.import_module(f"moltune.cli.{area}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from moltune.common.errors import UserError

    try:
        rc = args.func(args)
    except UserError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        sub = getattr(args, f"{args.command}_command", None)
        print(f"moltune {args.command}{' ' + sub if sub else ''}: error: {message}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"moltune {args.command}: interrupted; completed work is kept", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
