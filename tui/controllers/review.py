"""ReviewController: v4's pending changes, per file and hunk, through the git workspace."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from v4.agent.workspace import FileDiff, UndoPlan, Workspace, WorkspaceError


@dataclass(frozen=True, slots=True)
class ReviewOutcome:
    """What leaving the review screen did, for the chat."""

    reverted: int  # hunks rejected (reverted in the work tree)
    kept: int  # hunks still pending afterwards
    commit: str | None = None  # sha, when the user committed
    error: str | None = None

    @property
    def summary(self) -> str:
        if self.error:
            return self.error
        parts = [f"reverted {self.reverted} hunk{'s' * (self.reverted != 1)}"] if self.reverted else []
        if self.commit:
            parts.append(f"committed {self.commit[:12]}")
        elif self.kept:
            parts.append(f"{self.kept} hunk{'s' * (self.kept != 1)} still pending in the work tree")
        return "Review: " + ("; ".join(parts) if parts else "nothing changed") + "."


class ReviewController:
    """Every method runs git or reads the work tree, so screens call them from thread workers."""

    def __init__(self, *, workspace: Workspace) -> None:
        self.workspace = workspace

    def pending(self) -> list[FileDiff]:
        return self.workspace.pending()

    def pending_files(self) -> int:
        """Files with pending v4 changes (0 when the workspace's state cannot be read: the count is a hint)."""
        try:
            return len(self.workspace.pending())
        except WorkspaceError:
            return 0

    def finish(self, decisions: Mapping[str, bool], commit: bool, message: str | None) -> ReviewOutcome:
        """Revert the rejected hunks; then, if `commit`, commit what is left with `message`
        (None: the workspace's summary). Undecided hunks count as accepted."""
        rejected = sum(1 for keep in decisions.values() if not keep)
        try:
            left = self.workspace.review(decisions) if rejected else self.workspace.pending()
            kept = sum(len(d.hunks) for d in left)
            if not commit:
                return ReviewOutcome(rejected, kept)
            if not left:
                return ReviewOutcome(rejected, 0, error="Every hunk was rejected and reverted; nothing to commit.")
            return ReviewOutcome(rejected, 0, commit=self.workspace.commit(message or None))
        except WorkspaceError as exc:
            return ReviewOutcome(rejected, 0, error=f"Review failed: {exc}")

    def undo_plan(self) -> UndoPlan | str:
        """What undoing would remove (to ask the user first), or the workspace's refusal, for the chat."""
        try:
            return self.workspace.undo_plan()
        except WorkspaceError as exc:
            return f"Undo refused: {exc}"

    def undo(self, expected: str) -> tuple[bool, str]:
        """Revert the last v4 commit if it is still `expected`, the one the user confirmed: (done, the
        message for the chat, or the workspace's refusal)."""
        try:
            sha = self.workspace.undo(expected)
        except WorkspaceError as exc:
            return False, f"Undo refused: {exc}"
        return True, f"Undid v4 commit {sha[:12]}; its changes are gone from the branch (still in the reflog)."


def undo_question(plan: UndoPlan) -> tuple[str, str]:
    """The confirmation's question and details: which commit, which files, what happens to them."""
    files = "\n".join(f"  {path}" for path in plan.paths[:10])
    if len(plan.paths) > 10:
        files += f"\n  and {len(plan.paths) - 10} more"
    return (f"Undo v4 commit {plan.sha[:12]}?",
            f"{plan.subject}\n\nIt changed:\n{files}\n\nThe branch moves back to the commit before it and "
            "these files go back to what they held there. The commit stays in the reflog.")


def leave_question(decisions: Mapping[str, bool]) -> tuple[str, str] | None:
    """What to ask before leaving review with decisions not applied yet (None: nothing would be lost;
    an accepted hunk and an undecided one both stay pending)."""
    rejected = sum(not keep for keep in decisions.values())
    if not rejected:
        return None
    hunks = f"{rejected} rejected hunk{'s' * (rejected != 1)}"
    return (f"Apply your decisions? {hunks} not reverted yet.",
            f"Apply reverts the {hunks} now and keeps the rest pending; nothing is committed. "
            "Discard forgets the decisions and leaves the work tree as it is.")
