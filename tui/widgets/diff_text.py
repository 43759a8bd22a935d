"""DiffText: diff lines with the code highlighted in its file's language and changed lines tinted."""

from __future__ import annotations

from collections.abc import Sequence

from textual.content import Content
from textual.highlight import highlight
from textual.widget import Widget


class DiffText(Widget):
    """Lines starting with " ", "-" or "+" (or "⋯" between distant changes), drawn full width so a
    changed line reads as a band. Colours come from the component classes, i.e. from CSS."""

    COMPONENT_CLASSES = {"diff-text--added", "diff-text--removed", "diff-text--gap"}
    DEFAULT_CSS = """
    DiffText { height: auto; }
    DiffText > .diff-text--added { background: $success 18%; }
    DiffText > .diff-text--removed { background: $error 18%; }
    DiffText > .diff-text--gap { color: $text-muted; }
    """

    def __init__(self, lines: Sequence[str] = (), path: str | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.lines = list(lines)
        self.path = path

    def show(self, lines: Sequence[str], path: str | None = None) -> None:
        """Replace the lines (and the file the code belongs to)."""
        self.lines, self.path = list(lines), path or self.path
        self.refresh(layout=True)

    def render(self) -> Content:
        if not self.lines:
            return Content("")
        code = highlight("\n".join(line[1:] for line in self.lines), path=self.path).split("\n", allow_blank=True)
        styles = {"+": self.get_visual_style("diff-text--added"), "-": self.get_visual_style("diff-text--removed"),
                  "⋯": self.get_visual_style("diff-text--gap")}
        width = self.size.width
        rows = []
        for line, text in zip(self.lines, code, strict=False):  # the highlighter may add a last line
            marker = line[:1]
            row = Content(marker) + text
            row = row.pad_right(max(0, width - row.cell_length))
            rows.append(row.stylize_before(styles[marker]) if marker in styles else row)
        return Content("\n").join(rows)
