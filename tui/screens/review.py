"""ReviewScreen: v4's pending changes per file and hunk; accept or reject each, then commit."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label

from v4.agent.workspace import FileDiff

from ..controllers.review import ReviewController, ReviewOutcome, leave_question
from ..widgets.hunk_view import HunkView
from .choice import Choice, ChoiceScreen


class ReviewScreen(Screen[ReviewOutcome | None]):
    """Nothing changes until the user leaves with "apply" (rejected hunks are reverted) or "commit"
    (the same, then a commit of what is left). Leaving otherwise with rejections not applied asks
    whether to apply them first: a decision is never dropped silently."""

    CSS_PATH = "review.tcss"
    BINDINGS = [  # the tooltips are what help says of each key
        Binding("escape", "back", "Back", tooltip="leave; with rejected hunks not reverted yet, asks first"),
        Binding("ctrl+s", "finish(True)", "Commit",
                tooltip="revert the rejected hunks, then commit what is left (enter in the message too)"),
        Binding("ctrl+k", "finish(False)", "Apply",
                tooltip="revert the rejected hunks now and keep the rest pending; commit nothing"),
        Binding("A", "decide_all(True)", "Accept all"),
        Binding("X", "decide_all(False)", "Reject all"),
        Binding("m", "message", "Message", tooltip="edit the commit message (empty: v4 writes one)"),
        Binding("down,j", "app.focus_next", "Next", show=False),
        Binding("up,k", "app.focus_previous", "Previous", show=False),
    ]

    def __init__(self, controller: ReviewController) -> None:
        super().__init__()
        self.controller = controller
        self.decisions: dict[str, bool] = {}
        self.num_hunks = 0

    def compose(self) -> ComposeResult:
        yield Label("Review: loading pending changes…", id="review-title")
        yield VerticalScroll(id="review-hunks")
        with Horizontal(id="review-actions"):
            yield Input(placeholder="commit message (empty: v4 writes one)", id="review-message", compact=True)
            yield Button("Apply", id="apply", compact=True)
            yield Button("Commit", id="commit", variant="primary", compact=True)
            yield Button("Back", id="back", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="review")
    def load(self) -> None:
        diffs = self.controller.pending()
        self.app.call_from_thread(self.show_diffs, diffs)

    def show_diffs(self, diffs: list[FileDiff]) -> None:
        hunks = self.query_one("#review-hunks", VerticalScroll)
        self.num_hunks = sum(len(d.hunks) for d in diffs)
        if not diffs:
            hunks.mount(Label("No pending changes: v4 has not edited anything since the last commit."))
        for diff in diffs:
            hunks.mount(Label(f"{diff.path} ({diff.status})", classes="review-file", markup=False))
            hunks.mount_all(HunkView(hunk) for hunk in diff.hunks)
        self._retitle()
        if self.num_hunks:
            self.call_after_refresh(lambda: self.query(HunkView).first().focus())

    def on_hunk_view_decided(self, event: HunkView.Decided) -> None:
        self.decisions[event.hunk_view.hunk.id] = event.decision
        self._retitle()

    def action_decide_all(self, keep: bool) -> None:
        for view in self.query(HunkView):
            view.action_decide(keep)

    def action_message(self) -> None:
        self.query_one("#review-message", Input).focus()

    def action_back(self) -> None:
        """Leave; rejections not applied yet are applied, dropped or kept on screen as the user says."""
        question = leave_question(self.decisions) if self.num_hunks else None
        if question is None:
            self.dismiss(None)
            return
        choices = [Choice("apply", "Apply", "a", "primary"), Choice("discard", "Discard", "d", "error"),
                   Choice("stay", "Stay", "s")]
        self.app.push_screen(ChoiceScreen(*question, choices, focus="apply"), self._leave)

    def _leave(self, choice: str | None) -> None:
        if choice == "apply":
            self.action_finish(False)
        elif choice == "discard":
            self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "back":
            self.action_back()
        elif event.button.id in ("apply", "commit"):
            self.action_finish(event.button.id == "commit")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_finish(True)

    def action_finish(self, commit: bool) -> None:
        if not self.num_hunks:
            self.dismiss(None)
            return
        message = self.query_one("#review-message", Input).value.strip() or None
        self.query_one("#review-title", Label).update("Review: committing…" if commit else "Review: reverting…")
        self.finish(dict(self.decisions), commit, message)

    @work(thread=True, exclusive=True, group="review")
    def finish(self, decisions: dict[str, bool], commit: bool, message: str | None) -> None:
        outcome = self.controller.finish(decisions, commit, message)
        self.app.call_from_thread(self.dismiss, outcome)

    def _retitle(self) -> None:
        rejected = sum(not keep for keep in self.decisions.values())
        accepted = len(self.decisions) - rejected
        self.query_one("#review-title", Label).update(
            f"Review: {self.num_hunks} hunk{'s' * (self.num_hunks != 1)} · {accepted} accepted · "
            f"{rejected} rejected · {self.num_hunks - len(self.decisions)} undecided (kept)")
