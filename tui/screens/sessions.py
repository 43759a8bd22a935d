"""SessionsScreen: the saved conversations of this repository, to pick one to continue (/sessions)."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from v4.agent.sessions import SessionRecord


class SessionsScreen(ModalScreen[str | None]):
    """One row per saved session (the last first): when, how many turns, its first request. Enter
    continues the highlighted one (its id is returned); escape returns None."""

    DEFAULT_CSS = """
    SessionsScreen { align: center middle; background: $background 60%; }
    #sessions-body { width: 90%; max-width: 110; height: auto; max-height: 80%; border: round $accent;
                     background: $surface; padding: 0 1; }
    #sessions-title { text-style: bold; margin: 0 0 1 0; }
    #sessions-list { height: auto; max-height: 20; }
    """
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, records: Sequence[SessionRecord], current: str | None = None) -> None:
        super().__init__()
        self.records = list(records)
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="sessions-body"):
            yield Label("Continue a saved conversation (enter), or escape", id="sessions-title")
            yield OptionList(*[Option(self._row(r), id=r.id) for r in self.records], id="sessions-list")

    def _row(self, record: SessionRecord) -> str:
        mark = "▶ " if record.id == self.current else "  "
        when = record.updated[:16].replace("T", " ")
        return f"{mark}{when}  {record.turn_count:>3} turn(s)  {record.title or '(no request yet)'}  [{record.id}]"

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)
