"""AnswerView: the model's answer as it streams, prose as Markdown and edit blocks as diffs."""

from __future__ import annotations

from textual.containers import Vertical
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Markdown

from ..controllers.answer import EditPart, Prose, split_answer
from .edit_block import EditBlockView

RENDER_INTERVAL_S = 0.08  # pieces arrive per token; redraw at most ~12 times a second


class AnswerView(Vertical):
    """Holds the answer's text; `append` while it streams, `finish` when the turn ends. Each redraw
    splits the text again and updates only the children whose part changed."""

    DEFAULT_CSS = """
    AnswerView { height: auto; margin: 0 0 1 0; }
    AnswerView > Markdown { margin: 0; padding: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.text = ""
        self.finished = False
        self._timer: Timer | None = None

    def append(self, piece: str) -> None:
        self.text += piece
        self._schedule()

    def finish(self) -> None:
        """The answer is complete: draw it in full now (held-back lines included)."""
        self.finished = True
        self._draw()

    def _schedule(self) -> None:
        if self._timer is None:
            self._timer = self.set_timer(RENDER_INTERVAL_S, self._draw)

    def _draw(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        children = list(self.children)
        if not all(child.is_mounted for child in children):
            self._schedule()  # a part mounted last time is not ready to be updated yet
            return
        parts = split_answer(self.text, final=self.finished)
        if self.finished and not parts:
            parts = [Prose("*(no answer)*")]
        for index, part in enumerate(parts):
            child = children[index] if index < len(children) else None
            if _same_kind(child, part):
                _update(child, part)
                continue
            for stale in children[index:]:
                stale.remove()
            children = children[:index]
            self.mount_all([_widget(p) for p in parts[index:]])
            return
        for stale in children[len(parts):]:
            stale.remove()


def _same_kind(child: Widget | None, part: Prose | EditPart) -> bool:
    return isinstance(child, Markdown) if isinstance(part, Prose) else isinstance(child, EditBlockView)


def _update(child: Widget, part: Prose | EditPart) -> None:
    if isinstance(part, Prose):
        if child.source != part.text:
            child.update(part.text)
    elif child.part != part:
        child.show(part)


def _widget(part: Prose | EditPart) -> Widget:
    return Markdown(part.text) if isinstance(part, Prose) else EditBlockView(part)
