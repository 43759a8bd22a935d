"""ChatLog: the conversation, scrolled to the newest entry as entries arrive."""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widget import Widget

from .answer_view import AnswerView
from .note import Note
from .thinking_view import ThinkingView


class ChatLog(VerticalScroll):
    """Prompts, answers (each with its thinking above it) and notes, oldest first; stays at the bottom
    unless the user scrolls up. `answer` and `thinking` are the model's answer being streamed."""

    DEFAULT_CSS = """
    ChatLog { height: 1fr; padding: 0 1; }
    """

    def __init__(self, *children: Widget, id: str | None = None) -> None:
        super().__init__(*children, id=id)
        self.answer: AnswerView | None = None
        self.thinking: ThinkingView | None = None

    def on_mount(self) -> None:
        self.anchor()

    def prompt(self, text: str) -> Note:
        return self._add(Note(text, "prompt"))

    def note(self, text: str, kind: str = "info") -> Note:
        return self._add(Note(text, kind))

    def start_answer(self) -> AnswerView:
        """A new answer of the model: the turn's first, or the next after a reflection or tool results.
        The last one is finished; if it wrote nothing (it only called tools) it is removed."""
        self.end_answer(more=True)
        self.answer = self._add(AnswerView())
        return self.answer

    def add_thinking(self, piece: str) -> None:
        if self.answer is None:
            self.start_answer()
        if self.thinking is None:
            self.thinking = self._add(ThinkingView(), before=self.answer)
        self.thinking.append(piece)

    def add_answer(self, piece: str) -> None:
        if self.answer is None:
            self.start_answer()
        self.end_thinking()  # the answer starts where the thinking ends
        self.answer.append(piece)

    def end_thinking(self) -> None:
        if self.thinking is not None:
            self.thinking.finish()

    def end_answer(self, more: bool = False) -> None:
        """The answer is complete; `more`: another answer follows in this turn."""
        self.end_thinking()
        if self.answer is not None:
            if more and not self.answer.text.strip():
                self.answer.remove()
            else:
                self.answer.finish()
        self.answer = self.thinking = None

    def toggle_thinking(self) -> bool:
        """Expand the newest thinking, or collapse it when it is open; False when there is none."""
        views = list(self.query(ThinkingView))
        if not views:
            return False
        views[-1].collapsed = not views[-1].collapsed
        return True

    def clear(self, keep: tuple[Widget, ...] = ()) -> None:
        """Remove every entry except `keep`."""
        for child in list(self.children):
            if child not in keep:
                child.remove()
        self.answer = self.thinking = None

    def _add(self, widget: Widget, before: Widget | None = None) -> Widget:
        if self.is_attached:  # a worker's last messages may arrive while the app closes: nowhere to go
            self.mount(widget, before=before)
        return widget
