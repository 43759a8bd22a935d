"""Slash commands: parsing, and the errors that say what would work."""

from __future__ import annotations

import pytest

from v4.tui.controllers.slash import SLASH_COMMANDS, SlashError, completions, parse_slash
from v4.tui.screens.main import MainScreen


@pytest.mark.parametrize("text, action, argument", [
    ("/undo", "undo", None), ("/review", "review", None), ("/add src/a.py", "add_file", "src/a.py"),
    ("/drop  b.py ", "drop_file", "b.py"), ("/MODEL", "model", None), ("/watch", "watch", None),
    ("/clear", "clear", None), ("/init", "init", None), ("/help", "help", None), ("/quit", "quit", None),
])
def test_parses(text: str, action: str, argument: str | None) -> None:
    command, parsed = parse_slash(text)
    assert (command.action, parsed) == (action, argument)


@pytest.mark.parametrize("text, message", [
    ("/undoo", "Did you mean /undo?"), ("/xyz", "Unknown command /xyz"), ("/add", "needs PATH"),
    ("/undo now", "takes no argument"),
])
def test_refuses_with_a_hint(text: str, message: str) -> None:
    with pytest.raises(SlashError, match=message):
        parse_slash(text)


def test_every_command_has_an_action_and_a_completion() -> None:
    for command in SLASH_COMMANDS:
        assert command.action == "quit" or hasattr(MainScreen, f"action_{command.action}")
    assert "/add " in completions() and "/undo" in completions()
