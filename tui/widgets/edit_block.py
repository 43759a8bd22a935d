"""EditBlockView: one edit block of an answer, drawn as a diff under its file's path."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label

from ..controllers.answer import EditPart, diff_lines
from .diff_text import DiffText

KIND_LABELS = {"replace": "edit", "create": "new file", "delete": "delete"}


class EditBlockView(Vertical):
    """The path, what the block does, and its diff; an unparsable block shows the parser's reason."""

    DEFAULT_CSS = """
    EditBlockView { height: auto; margin: 0 0 1 0; border-left: thick $accent; padding: 0 0 0 1; }
    EditBlockView > .edit-block--title { color: $text-accent; text-style: bold; }
    EditBlockView.-error { border-left: thick $error; }
    EditBlockView.-error > .edit-block--title { color: $text-error; }
    """

    def __init__(self, part: EditPart) -> None:
        super().__init__()
        self.part = part
        self._composed = False

    def compose(self) -> ComposeResult:
        yield Label(classes="edit-block--title")
        yield DiffText()

    def on_mount(self) -> None:
        self._composed = True
        self.show(self.part)

    def show(self, part: EditPart) -> None:
        """Draw `part` (called again as a streamed block grows)."""
        self.part = part
        if not self._composed:
            return  # on_mount draws it
        self.set_class(part.error is not None, "-error")
        title = self.query_one(".edit-block--title", Label)
        diff = self.query_one(DiffText)
        if part.error is not None:
            title.update("✗ edit block the agent cannot read")
            diff.show([f" {line}" for line in part.error.splitlines()])
            return
        writing = "" if part.complete else " …"
        title.update(f"✎ {part.path or '?'} ({KIND_LABELS[part.kind]}){writing}")
        diff.show(diff_lines(part), part.path)
