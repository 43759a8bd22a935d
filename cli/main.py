"""The `v4` console script: the TUI by default, and the headless commands of `commands.COMMANDS`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import tui_command
from .backend_args import add_backend_arguments
from .commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; with no command, `v4` opens the TUI in the current directory."""
    parser = argparse.ArgumentParser(
        prog="v4",
        description="A coding agent whose model has read the whole repository. "
        "Run with no command to open the TUI in the current directory.",
    )
    add_backend_arguments(parser)  # for the TUI: `v4 --replay FILE`, `v4 --model DIR`, `v4 --endpoint URL`
    parser.set_defaults(handler=tui_command.run)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, aliases=list(command.aliases), help=command.help,
                                    description=command.description)
        command.build(sub)
        sub.set_defaults(handler=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `v4` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except BrokenPipeError:  # `v4 index --json | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
