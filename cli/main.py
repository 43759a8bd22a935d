"""The `v4` console script: the TUI by default, and the headless commands of `commands.COMMANDS`.

Options may come before the command (`v4 --model DIR generate "hi"`), as `v4 --help` lists them:
they are moved after the command name before parsing, so the command reads them as its own, and an
option the command does not take is an error that names it instead of being ignored.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence

from . import tui_command
from .backend_args import add_agent_arguments, add_backend_arguments, add_session_arguments
from .commands import COMMANDS


class ArgumentParser(argparse.ArgumentParser):
    """argparse, keeping each command's parser so that an unknown option is explained against the
    options of the command it was given to."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}


def unrecognized(parser: ArgumentParser, command: str | None, extras: Sequence[str]) -> str:
    """The error for arguments nobody took: each option with "did you mean" from the options of the
    command it went to, or "does not apply" when it is another command's (or the TUI's) option."""
    target = parser.commands.get(command) if command else parser
    own = [s for action in target._actions for s in action.option_strings]
    everywhere = {s for p in (parser, *parser.commands.values()) for action in p._actions for s in action.option_strings}
    where = f"`v4 {command}`" if command else "`v4` (the TUI)"
    parts = []
    for word in extras:
        option = word.split("=", 1)[0]
        close = difflib.get_close_matches(option, own, n=1) if word.startswith("-") else []
        if word.startswith("-") and option in everywhere:
            parts.append(f"{word} (does not apply to {where})")
        elif close:
            parts.append(f"{word} (did you mean {close[0]}?)")
        else:
            parts.append(word)
    return "unrecognized arguments: " + " ".join(parts)


def build_parser() -> ArgumentParser:
    """The argument parser; with no command, `v4` opens the TUI in the current directory."""
    parser = ArgumentParser(
        prog="v4",
        description="A coding agent whose model has read the whole repository. "
        "Run with no command to open the TUI in the current directory.",
    )
    add_backend_arguments(parser)  # for the TUI: `v4 --replay FILE`, `v4 --model DIR`, `v4 --endpoint URL`
    add_agent_arguments(parser)
    add_session_arguments(parser)
    parser.set_defaults(handler=tui_command.run)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, aliases=list(command.aliases), help=command.help,
                                    description=command.description)
        command.build(sub)
        sub.set_defaults(handler=command.run)
        for name in (command.name, *command.aliases):
            parser.commands[name] = sub
    return parser


def hoist_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """`argv` with the options written before the command moved after its name. An unknown option
    before any command is reported here, with a suggestion, instead of its value being read as the
    command ("invalid choice: 'x'")."""
    names = {name for command in COMMANDS for name in (command.name, *command.aliases)}
    takes_value = {s: action.nargs != 0 for action in parser._actions for s in action.option_strings}
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == "--":
            return list(argv)
        if word in names:
            return [word, *argv[:index], *argv[index + 1:]] if index else list(argv)
        if word.startswith("-") and word != "-":
            option = word.split("=", 1)[0]
            if option not in takes_value:
                close = difflib.get_close_matches(option, list(takes_value), n=1)
                parser.error(f"unrecognized option {option}" + (f" (did you mean {close[0]}?)" if close else ""))
            index += 2 if takes_value[option] and "=" not in word else 1
            continue
        return list(argv)  # the first positional that is not a command: the TUI takes none, argparse says so
    return list(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `v4` console script."""
    parser = build_parser()
    args, extras = parser.parse_known_args(hoist_options(parser, sys.argv[1:] if argv is None else argv))
    if extras:
        parser.error(unrecognized(parser, args.command, extras))
    try:
        return args.handler(args)
    except BrokenPipeError:  # `v4 index --json | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
