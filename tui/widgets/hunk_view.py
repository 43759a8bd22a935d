"""HunkView: one pending hunk, to accept or reject with a key or a click."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Button, Label

from v4.agent.workspace import Hunk

from .diff_text import DiffText

STATES = {None: "undecided (kept)", True: "accepted", False: "rejected"}


class HunkView(Vertical, can_focus=True):
    """The hunk's header and highlighted diff; `decision` is None until the user decides (an
    undecided hunk is kept, as the workspace treats it)."""

    BINDINGS = [
        Binding("a", "decide(True)", "Accept", tooltip="accept the focused hunk: it stays"),
        Binding("x", "decide(False)", "Reject", tooltip="reject the focused hunk: reverted when you apply or commit"),
        Binding("space", "toggle", "Toggle", tooltip="accept or reject the focused hunk (or click its buttons)"),
    ]
    DEFAULT_CSS = """
    HunkView { height: auto; margin: 0 0 1 0; border-left: thick $panel; }
    HunkView:focus { border-left: thick $accent; background: $boost; }
    HunkView.-accepted { border-left: thick $success; }
    HunkView.-rejected { border-left: thick $error; }
    HunkView.-rejected DiffText { opacity: 60%; }
    HunkView > Horizontal { height: 1; }
    HunkView .hunk-view--header { width: 1fr; color: $text-muted; }
    HunkView .hunk-view--state { width: auto; margin: 0 1; }
    HunkView.-accepted .hunk-view--state { color: $text-success; }
    HunkView.-rejected .hunk-view--state { color: $text-error; }
    HunkView Button { margin: 0 0 0 1; min-width: 8; width: auto; }
    """

    decision: reactive[bool | None] = reactive(None)

    @dataclass
    class Decided(Message):
        """The user accepted (True) or rejected (False) the hunk."""

        hunk_view: HunkView
        decision: bool

        @property
        def control(self) -> HunkView:
            return self.hunk_view

    def __init__(self, hunk: Hunk) -> None:
        super().__init__(id=f"hunk-{hunk.id.rsplit('#', 1)[-1]}")
        self.hunk = hunk

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Label(self.hunk.header, classes="hunk-view--header", markup=False)
            yield Label(STATES[None], classes="hunk-view--state")
            for name, variant in (("accept", "success"), ("reject", "error")):
                button = Button(name, id=name, variant=variant, compact=True)
                button.can_focus = False  # for the mouse: keys act on the focused hunk
                yield button
        yield DiffText([_as_diff_line(line) for line in self.hunk.lines], self.hunk.path)

    def watch_decision(self, decision: bool | None) -> None:
        self.set_class(decision is True, "-accepted")
        self.set_class(decision is False, "-rejected")
        if self.is_mounted:
            self.query_one(".hunk-view--state", Label).update(STATES[decision])

    def action_decide(self, keep: bool) -> None:
        self.decision = keep
        self.post_message(self.Decided(self, keep))

    def action_toggle(self) -> None:
        self.action_decide(self.decision is False)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.focus()
        self.action_decide(event.button.id == "accept")


def _as_diff_line(line: str) -> str:
    """git's "\\ No newline at end of file" marker is not code: show it as a gap line."""
    return "⋯" + line[1:] if line.startswith("\\") else line
