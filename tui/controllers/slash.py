"""Slash commands: what the prompt accepts besides questions, parsed into (action, argument).

The same table feeds the help screen and the prompt's completion, so they cannot drift apart.
Each action names a `MainScreen.action_*` method, the one its key binding and palette entry call.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from v4.agent.options import EFFORTS


@dataclass(frozen=True, slots=True)
class SlashCommand:
    """One slash command: `/name [argument]`."""

    name: str
    action: str  # MainScreen.action_<action>
    help: str
    argument: str | None = None  # the argument's name, when it takes one
    optional: bool = False  # the argument may be left out


SLASH_COMMANDS: tuple[SlashCommand, ...] = (
    SlashCommand("review", "review", "review pending changes: accept or reject hunks, then commit"),
    SlashCommand("undo", "undo", "undo the last v4 commit, after asking (only if it is HEAD, unpushed, tree clean)"),
    SlashCommand("add", "add_file", "force a file into the context, in full", "PATH"),
    SlashCommand("drop", "drop_file", "drop a file from the context", "PATH"),
    SlashCommand("model", "model", "show the backend and model"),
    SlashCommand("think", "think", "thinking on/off for the next turns; high or max sets its effort (and turns "
                 "it on)", "[on|off|high|max]", optional=True),
    SlashCommand("init", "init", "draft AGENTS.md from the repository map (or improve the one there), as a "
                 "pending change to review"),
    SlashCommand("watch", "watch", "watch mode on/off: follow file changes, act on AI! and AI? comments"),
    SlashCommand("sessions", "sessions", "continue a saved conversation of this repository (v4 --continue: the last)"),
    SlashCommand("compact", "compact", "summarise the older turns now, keeping the newest and the repository "
                 "(v4 does it by itself near the context's end)"),
    SlashCommand("clear", "clear", "clear the chat and forget the conversation"),
    SlashCommand("help", "help", "keys and commands"),
    SlashCommand("quit", "quit", "quit (pending changes stay in the work tree)"),
)
BY_NAME = {command.name: command for command in SLASH_COMMANDS}


class SlashError(ValueError):
    """An unknown command or a missing argument; the message says what would work."""


def parse_slash(text: str) -> tuple[SlashCommand, str | None]:
    """`"/add src/a.py"` -> (the add command, "src/a.py"); SlashError for anything else."""
    name, _, rest = text.strip().removeprefix("/").partition(" ")
    command = BY_NAME.get(name.lower())
    if command is None:
        close = difflib.get_close_matches(name.lower(), BY_NAME, n=1)
        hint = f" Did you mean /{close[0]}?" if close else ""
        raise SlashError(f"Unknown command /{name}.{hint} Type /help for the list.")
    argument = rest.strip() or None
    if command.argument and argument is None and not command.optional:
        raise SlashError(f"/{command.name} needs {command.argument}: /{command.name} {command.argument}")
    if not command.argument and argument is not None:
        raise SlashError(f"/{command.name} takes no argument")
    return command, argument


def completions() -> list[str]:
    """What the prompt suggests as the user types a slash."""
    return [f"/{c.name}" + (" " if c.argument and not c.optional else "") for c in SLASH_COMMANDS]


def think_argument(thinking: bool, effort: str | None, argument: str | None) -> tuple[bool, str | None]:
    """/think's new (thinking, effort): no argument toggles, `on`/`off` say which, `high`/`max` set the
    effort and turn thinking on. SlashError for anything else."""
    choice = (argument or "").strip().lower()
    if not choice:
        return not thinking, effort
    if choice in ("on", "off"):
        return choice == "on", effort
    if choice in EFFORTS:
        return True, choice
    raise SlashError(f"/think takes on, off, {' or '.join(EFFORTS)} (or nothing, to toggle), not {argument!r}")


def thinking_note(thinking: bool, effort: str | None) -> str:
    """What the chat says after /think."""
    if not thinking:
        return "Thinking off for the next turns; /think turns it on again."
    if effort:
        return f"Thinking on (effort {effort}) for the next turns; /think turns it off."
    return "Thinking on for the next turns; /think turns it off, /think max thinks hardest."
