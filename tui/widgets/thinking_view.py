"""ThinkingView: the model's thinking above its answer, collapsed; a click on its title (or enter
on it, or the screen's key) shows it."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.timer import Timer
from textual.widgets import Collapsible, Static

RENDER_INTERVAL_S = 0.1  # pieces arrive per token; redraw the count and the text ~10 times a second


class ThinkingView(Collapsible):
    """`append` while the thinking streams ("Thinking… (N words)"), `finish` when the answer starts or
    the model stops ("Thought for X s", timed from the first piece)."""

    DEFAULT_CSS = """
    ThinkingView { margin: 0 0 1 0; padding: 0; border-top: none; background: transparent; }
    ThinkingView > Contents { padding: 0 1 0 3; }
    ThinkingView .thinking-text { color: $text-muted; text-style: italic; }
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.text = ""
        self.seconds: float | None = None  # set by finish
        self._clock = clock
        self._started = clock()
        self._body = Static("", markup=False, classes="thinking-text")
        self._timer: Timer | None = None
        super().__init__(self._body, title=self.label(), collapsed=True)

    @property
    def words(self) -> int:
        return len(self.text.split())

    def label(self) -> str:
        if self.seconds is None:
            return f"Thinking… ({self.words:,} word{'s' * (self.words != 1)})"
        shown = f"{self.seconds:.1f}" if self.seconds < 10 else f"{self.seconds:.0f}"
        return f"Thought for {shown} s ({self.words:,} word{'s' * (self.words != 1)})"

    def append(self, piece: str) -> None:
        self.text += piece
        if self._timer is None:
            self._timer = self.set_timer(RENDER_INTERVAL_S, self._draw)

    def finish(self) -> None:
        """The thinking is over: say for how long, and draw all of it now."""
        if self.seconds is None:
            self.seconds = self._clock() - self._started
            self._draw()

    def _draw(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self.title = self.label()
        self._body.update(self.text)
