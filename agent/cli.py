"""The `v4` command line: the TUI by default, and the headless commands.

Each command is a small function taking parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from . import engram_command, index_command, model_command, refactor_command, serve, watch_command
from .backend_options import add_backend_arguments


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; with no command, `v4` opens the TUI in the current directory."""
    parser = argparse.ArgumentParser(
        prog="v4",
        description="A coding agent whose model has read the whole repository. "
        "Run with no command to open the TUI in the current directory.",
    )
    add_backend_arguments(parser)  # for the TUI: `v4 --replay FILE`, `v4 --model DIR`, `v4 --endpoint URL`
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    index_command.add_parser(commands)
    model_command.add_parsers(commands)
    refactor_command.add_parsers(commands)
    serve.add_parser(commands)
    engram_command.add_parsers(commands)
    watch_command.add_parser(commands)
    return parser


def _tui(args: argparse.Namespace) -> int:
    from v4.tui.app import run  # Textual loads only for the TUI

    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `v4` console script."""
    args = build_parser().parse_args(argv)
    handlers: dict[str | None, Callable[[argparse.Namespace], int]] = {
        None: _tui,
        "index": index_command.run,
        "model": model_command.run_model,
        "generate": model_command.run_generate,
        "refactor": refactor_command.run_refactor,
        "review": refactor_command.run_review,
        "commit": refactor_command.run_commit,
        "undo": refactor_command.run_undo,
        "serve": serve.run,
        "prefill": engram_command.run_prefill,
        "engram": engram_command.run_engram,
        "watch": watch_command.run,
    }
    try:
        return handlers[args.command](args)
    except BrokenPipeError:  # `v4 index --json | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
