"""HelpScreen: every key and slash command, built from the bindings and the command table."""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

from ..controllers.slash import SLASH_COMMANDS


class HelpScreen(ModalScreen[None]):
    """Keys (from the bindings given, so it lists what is really bound, review's included) and slash
    commands."""

    CSS_PATH = "help.tcss"
    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "Close")]

    def __init__(self, bindings: Iterable[Binding], review: Iterable[Binding] = ()) -> None:
        super().__init__()
        self.bindings = list(bindings)
        self.review = list(review)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Markdown(self.text())

    def text(self) -> str:
        commands = "\n".join(f"- `/{c.name}{' ' + c.argument if c.argument else ''}` {c.help}"
                             for c in SLASH_COMMANDS)
        return (
            "Type a request and press enter. The model's edits land in the work tree; nothing is "
            "committed until you review them.\n\n"
            f"**Keys** (also in the palette, `ctrl+p`)\n\n{_keys(self.bindings)}\n\n"
            f"**Commands**\n\n{commands}\n\n"
            "**Context panel**: `a` adds the highlighted file in full, `d` drops it.\n\n"
            "**Thinking** streams collapsed above each answer: click its title (or `ctrl+y`) to read it; "
            "`/think` turns it off or on.\n\n"
            "**Commands the model runs** are asked first: `1` runs it once, `2` allows its first words for "
            "the session, `3`, `escape` or `enter` denies it. Each call shows as a line in the chat, with its "
            "exit code.\n\n"
            "**Review** (`ctrl+r`): an undecided hunk stays, as an accepted one does; only `Apply` and "
            f"`Commit` (or leaving and answering Apply) revert the rejected ones.\n\n{_keys(self.review)}\n\n"
            "`escape` closes this help."
        )


def _keys(bindings: Iterable[Binding]) -> str:
    """One line per action: its keys, what it is, and its tooltip when it has one."""
    by_action: dict[str, tuple[list[str], str]] = {}
    for binding in bindings:
        if binding.description:
            keys, tooltip = by_action.setdefault(binding.description, ([], binding.tooltip))
            keys.append(_names(binding.key))
    return "\n".join(f"- `{', '.join(keys)}` {description}" + (f": {tooltip}" if tooltip else "")
                     for description, (keys, tooltip) in by_action.items())


def _names(key: str) -> str:
    return ", ".join(k.replace("question_mark", "?") for k in key.split(","))
