"""StartupPanel: what start-up is doing, one row per step, then what it found."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar

STEPS = {"index": "index the repository", "model": "load the model", "plan": "plan the context",
         "prefill": "prefill the context"}


class StartupPanel(Vertical):
    """Each step: a mark (· waiting, ▸ running, ✓ done, ✗ failed), its label and, while it runs, a
    bar (pulsing when the step cannot count)."""

    DEFAULT_CSS = """
    StartupPanel { height: auto; margin: 0 0 1 0; padding: 0 1; border-left: thick $secondary; }
    StartupPanel > Horizontal { height: auto; }
    StartupPanel Label { width: 1fr; }
    StartupPanel ProgressBar { width: 24; height: 1; }
    StartupPanel .-done Label { color: $text-muted; }
    StartupPanel .-failed Label { color: $text-error; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.running: dict[str, str] = {}  # step -> label, while it runs

    def compose(self) -> ComposeResult:
        for step, label in STEPS.items():
            with Horizontal(id=f"step-{step}"):
                yield Label(f"· {label}")
                bar = ProgressBar(total=None, show_eta=False, show_percentage=False)
                bar.display = False
                yield bar

    def update_step(self, step: str, label: str, done: int, total: int, finished: bool) -> None:
        row = self.query_one(f"#step-{step}", Horizontal)
        bar = row.query_one(ProgressBar)
        row.set_class(finished, "-done")
        row.query_one(Label).update(("✓ " if finished else "▸ ") + label)
        bar.display = not finished
        bar.update(total=total or None, progress=done)
        if finished:
            self.running.pop(step, None)
        else:
            self.running[step] = label

    def fail(self, error: str) -> None:
        """Mark the step that was running as failed; the error itself goes in the chat."""
        for step, label in self.running.items():
            row = self.query_one(f"#step-{step}", Horizontal)
            row.query_one(ProgressBar).display = False
            row.add_class("-failed")
            row.query_one(Label).update(f"✗ {label}")
        self.running.clear()
