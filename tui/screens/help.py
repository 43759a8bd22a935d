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
    """Keys (from the bindings given, so it lists what is really bound) and slash commands."""

    CSS_PATH = "help.tcss"
    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "Close")]

    def __init__(self, bindings: Iterable[Binding]) -> None:
        super().__init__()
        self.bindings = list(bindings)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Markdown(self.text())

    def text(self) -> str:
        by_action: dict[str, list[str]] = {}
        for binding in self.bindings:
            if binding.description:
                by_action.setdefault(binding.description, []).append(_keys(binding.key))
        keys = "\n".join(f"- `{', '.join(k)}` {description}" for description, k in by_action.items())
        commands = "\n".join(f"- `/{c.name}{' ' + c.argument if c.argument else ''}` {c.help}"
                             for c in SLASH_COMMANDS)
        return (
            "Type a request and press enter. The model's edits land in the work tree; nothing is "
            "committed until you review them.\n\n"
            f"**Keys** (also in the palette, `ctrl+p`)\n\n{keys}\n\n"
            f"**Commands**\n\n{commands}\n\n"
            "**Context panel**: `a` adds the highlighted file in full, `d` drops it.\n\n"
            "**Review**: `a` accept, `x` reject, `space` toggle the focused hunk (or click its buttons), "
            "`A`/`X` all; `m` edits the message, `ctrl+s` commits, `escape` goes back changing nothing.\n\n"
            "`escape` closes this help."
        )


def _keys(key: str) -> str:
    return ", ".join(k.replace("question_mark", "?") for k in key.split(","))
