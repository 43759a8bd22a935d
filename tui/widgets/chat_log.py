"""ChatLog: the conversation, scrolled to the newest entry as entries arrive."""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widget import Widget

from .answer_view import AnswerView
from .note import Note


class ChatLog(VerticalScroll):
    """Prompts, answers and notes, oldest first; stays at the bottom unless the user scrolls up."""

    DEFAULT_CSS = """
    ChatLog { height: 1fr; padding: 0 1; }
    """

    def on_mount(self) -> None:
        self.anchor()

    def prompt(self, text: str) -> Note:
        return self._add(Note(text, "prompt"))

    def note(self, text: str, kind: str = "info") -> Note:
        return self._add(Note(text, kind))

    def start_answer(self) -> AnswerView:
        return self._add(AnswerView())

    def clear(self, keep: tuple[Widget, ...] = ()) -> None:
        """Remove every entry except `keep`."""
        for child in list(self.children):
            if child not in keep:
                child.remove()

    def _add(self, widget: Widget) -> Widget:
        self.mount(widget)
        return widget
