"""ContextPanel: what the model reads, in context order, against the budget."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import DataTable, Label, ProgressBar

from v4.agent.context import ContextView

MODES = {"full": "full", "outline": "outl", "omitted": "omit", "dropped": "drop"}


class ContextPanel(Vertical):
    """The budget meter, every file with its mode and tokens (`+` marks /add), the files changed
    since the context was cached, and the files this conversation attached in full after the
    repository (agent/attachments.py). `a`/`d` on a row ask to add or drop that file."""

    BINDINGS = [("a", "force(True)", "Add file"), ("d", "force(False)", "Drop file")]
    DEFAULT_CSS = """
    ContextPanel { height: 1fr; }
    ContextPanel > #context-total { width: 1fr; height: auto; }
    ContextPanel > #context-meter { width: 1fr; }
    ContextPanel > #context-meter Bar { width: 1fr; }
    ContextPanel > DataTable { height: 1fr; }
    ContextPanel > #context-changed { height: auto; max-height: 6; color: $text-warning; }
    ContextPanel > #context-attached { height: auto; max-height: 6; color: $text-muted; }
    """

    context: reactive[ContextView | None] = reactive(None)
    changed: reactive[tuple[str, ...]] = reactive(())
    attached: reactive[tuple[str, ...]] = reactive(())  # "path (reason)", in the order they were attached
    status = reactive("indexing the repository…")  # shown until there is a plan

    @dataclass
    class ForceRequested(Message):
        """The user asked to force `path` in (`add`) or out of the context."""

        path: str
        add: bool

    def compose(self) -> ComposeResult:
        yield Label(f"context: {self.status}", id="context-total")
        meter = ProgressBar(total=1, show_eta=False, show_percentage=True, id="context-meter")
        meter.display = False  # a budget meter at 0% before there is a plan would read as progress
        yield meter
        yield DataTable(cursor_type="row", zebra_stripes=True, id="context-files")
        yield Label("", id="context-changed")
        yield Label("", id="context-attached")

    def on_resize(self) -> None:
        self.watch_context(self.context)

    def watch_status(self, status: str) -> None:
        if self.context is None and self.is_mounted:
            self.query_one("#context-total", Label).update(f"context: {status}")

    def watch_context(self, view: ContextView | None) -> None:
        if view is None or not self.is_mounted:
            return
        included = sum(f.mode not in ("omitted", "dropped") for f in view.files)
        self.query_one("#context-total", Label).update(
            f"{view.total_tokens:,} / {view.budget:,} tokens · {included}/{len(view.files)} files")
        meter = self.query_one(ProgressBar)
        meter.display = True
        meter.update(total=max(view.budget, 1), progress=view.total_tokens)
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear(columns=True)
        path_width = max(8, self.size.width - 18)
        table.add_column("file", width=path_width, key="file")
        table.add_column("mode", width=5)
        table.add_column("tokens", width=6)
        for row in view.files:
            mode = MODES.get(row.mode, row.mode) + ("+" if row.forced == "added" else "")
            table.add_row(_fit(row.path, path_width), mode, f"{row.tokens:,}", key=row.path)
        if view.files:
            table.move_cursor(row=min(cursor, len(view.files) - 1))

    def watch_changed(self, changed: tuple[str, ...]) -> None:
        if not self.is_mounted:
            return
        text = ("changed since cached:\n" + "\n".join(f" {p}" for p in changed)) if changed else ""
        self.query_one("#context-changed", Label).update(text)

    def watch_attached(self, attached: tuple[str, ...]) -> None:
        if not self.is_mounted:
            return
        label = self.query_one("#context-attached", Label)
        label.update("attached after the repository:\n" + "\n".join(f" {p}" for p in attached))
        label.display = bool(attached)  # no empty row for a conversation with nothing attached

    def on_mount(self) -> None:
        self.watch_status(self.status)
        self.watch_context(self.context)
        self.watch_changed(self.changed)
        self.watch_attached(self.attached)

    def action_force(self, add: bool) -> None:
        table = self.query_one(DataTable)
        if table.row_count:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
            self.post_message(self.ForceRequested(str(key.value), add))


def _fit(path: str, width: int) -> str:
    """Cut a long path at the front, where the directories are: the file name matters most."""
    return path if len(path) <= width else "…" + path[-(width - 1):]
