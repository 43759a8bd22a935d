"""ChatController: one instruction at a time through the agent's session."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

from textual.message import Message

from v4.agent.attachments import describe
from v4.agent.session import Session
from v4.agent.turn import ToolRan, TurnResult
from v4.agent.warm import ContextWarmer
from v4.agent.workspace import WorkspaceError

from ..messages import TurnFinished
from .approval import ApprovalController
from .metering import STOPPED, MeteredBackend

MAX_TOOL_LINE = 160  # characters of a command shown in its chat line


class ChatController:
    """Runs turns through `session` (whose backend is `backend`, metered). `ask` blocks for the whole
    turn (inference, edits, git), so the screen calls it from a thread worker; what happens arrives
    as messages: AnswerStarted/ThinkingDelta/AnswerDelta/AnswerMetrics from the backend, ToolCallRan
    and ApprovalRequested from the session's tools, then TurnFinished."""

    def __init__(self, *, session: Session, backend: MeteredBackend, pending_files: Callable[[], int],
                 post_message: Callable[[Message], object], warmer: ContextWarmer | None = None,
                 approvals: ApprovalController | None = None) -> None:
        self.session = session
        self.backend = backend
        self.approvals = approvals  # the questions of this session's commands, stopped with the answer
        self.warmer = warmer  # a background re-prefill gives the engine up for the turn
        self._pending_files = pending_files
        self._post = post_message

    def ask(self, instruction: str, *, user_edited: Sequence[str] = (), answer_only: bool = False,
            editable: Sequence[str] | None = None) -> TurnResult:
        """Answer `instruction`; the model's edits land in the work tree (never committed here).
        `user_edited`, `answer_only` (watch mode's AI comments) and `editable` (/init) are Session.run's."""
        self.backend.begin_turn()
        if self.approvals is not None:
            self.approvals.begin_turn()
        try:
            with self.warmer.foreground() if self.warmer is not None else nullcontext():
                result = self.session.run(instruction, user_edited=user_edited, answer_only=answer_only,
                                          editable=editable)
        except (WorkspaceError, OSError) as exc:  # the session reports edit and backend errors itself
            result = TurnResult(error=f"{type(exc).__name__}: {exc}")
        try:
            pending = self._pending_files()
        except WorkspaceError:
            pending = 0
        self._post(TurnFinished(result, pending))
        return result

    def stop(self) -> None:
        """Interrupt the answer being generated, and deny the command it asks to run (safe from the
        event loop while `ask` runs)."""
        self.backend.stop()
        if self.approvals is not None:
            self.approvals.stop()

    def clear(self) -> None:
        """Forget the conversation; the system message (rules + repository) stays, and stays cached. The
        saved conversation stays under .v4/sessions/ (/sessions continues it); the next turn starts a new one."""
        self.session.history.clear()
        self.session.turns.clear()
        if self.session.attachments is not None:
            self.session.attachments.forget()
        if self.session.recorder is not None:
            self.session.recorder.start_new()


def describe_failure(result: TurnResult) -> str | None:
    """The chat's line for a turn that went wrong (None when it did not), naming whose fault it was."""
    if not result.error:
        return None
    if result.applied:
        return f"Applied, but: {result.error}"
    if result.refused:
        return f"v4 did not edit: {result.error}"
    if result.error == STOPPED:
        return "Stopped."
    if result.reflections or result.error.startswith("Your edits were not applied"):
        tries = f" after {result.reflections} reflection{'s' * (result.reflections != 1)}" if result.reflections else ""
        return f"✗ The model's edits did not apply{tries}: {result.error}"
    return f"✗ The turn failed: {result.error}"


def turn_notes(result: TurnResult) -> list[tuple[str, str]]:
    """The chat's notes for a finished turn, as (text, Note kind): what was applied, what went wrong,
    and, for an answer that edits nothing, a word that it proposes no change."""
    notes = []
    if result.attached:  # what the request carried beyond the repository prefix (the plan's report)
        listed = ", ".join(describe(a) for a in result.attached)
        notes.append((f"Attached in full after the repository context: {listed}.", "info"))
    if result.applied:
        notes.append((f"✓ Applied to {', '.join(result.files)} (in the work tree, not committed). "
                      "Review with ctrl+r or /review.", "success"))
    failure = describe_failure(result)
    if failure:
        notes.append((failure, "info" if result.error == STOPPED else "error"))
    elif result.declined:
        notes.append(("Not applied.", "info"))
    elif not result.applied:
        notes.append(("No changes proposed: the answer has no edits.", "info"))
    return notes


def tool_line(event: ToolRan) -> tuple[str, str]:
    """The chat's line for a tool call, as (text, Note kind): the command or path, then how it ended
    (the exit code) or why it did not run."""
    arguments = event.arguments
    if event.name == "run_command":
        what = "$ " + " ⏎ ".join(str(arguments.get("command", "")).splitlines())
    elif event.name == "read_file":
        what = f"read {arguments.get('path', '')}"
    else:
        what = f"{event.name} {' '.join(str(value) for value in arguments.values())}"
    if len(what) > MAX_TOOL_LINE:
        what = what[:MAX_TOOL_LINE - 1] + "…"
    if not event.allowed:
        reason = (event.reason or "refused").removeprefix("not allowed: ").removesuffix(" The command was not run.")
        reason = reason.rstrip(".")
        return f"{what}  ✗ not run: {reason}", "tool-refused"
    if event.name != "run_command":
        return f"{what}  ✓", "tool"
    ended = f"exit {event.exit_code}" if event.exit_code is not None else "stopped (timed out)"
    return f"{what}  {'✓' if event.exit_code == 0 else '✗'} {ended}", "tool"
