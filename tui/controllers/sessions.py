"""SessionsController: /sessions (pick a saved conversation and continue it in the running app),
/compact (summarise the older turns now), and how a saved conversation is shown again in the chat.

Continuing one replaces the session's history (the system message, the repository as it is now,
stays) and prefills it: on the embedded engine from the prefix-state store, where the session that
saved it left its state, so the chat can say how many tokens were reused.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

from textual.message import Message

from v4.agent.backends import Backend, BackendError
from v4.agent.bootstrap import prefill_session
from v4.agent.session import Session
from v4.agent.sessions import SessionRecord, SessionStore, SessionStoreError
from v4.agent.warm import ContextWarmer

from v4.agent.compaction import CompactionError

from ..messages import ConversationCompacted, SessionResumed

REQUEST_MARK = "# Request\n\n"  # what v4 put before a request (instructions, attachments) ends here


class SessionsController:
    """Lists this repository's saved sessions and continues one (blocking: call from thread workers,
    never while a turn runs: they share the engine's state)."""

    def __init__(self, *, session: Session, backend: Backend, post_message: Callable[[Message], object],
                 warmer: ContextWarmer | None = None) -> None:
        self.session = session
        self.backend = backend  # the unmetered backend: a prefill is not an answer
        self.warmer = warmer
        self.store = SessionStore(session.root)
        self._post = post_message

    def saved(self) -> tuple[list[SessionRecord], list[str]]:
        """The saved sessions (the last updated first) and the warnings for files that cannot be read."""
        warnings: list[str] = []
        return self.store.list(warnings), warnings

    def current(self) -> str | None:
        recorder = self.session.recorder
        return recorder.record.id if recorder is not None else None

    def resume(self, session_id: str) -> None:
        """Continue the saved session `session_id`; posts SessionResumed (with the error, if any)."""
        try:
            record = self.store.load(session_id)
        except SessionStoreError as exc:
            self._post(SessionResumed(None, None, str(exc)))
            return
        with self.warmer.foreground() if self.warmer is not None else nullcontext():
            self.session.resume(record)
            try:
                stats = prefill_session(self.backend, self.session)
            except BackendError as exc:
                self._post(SessionResumed(record, None, f"the conversation was loaded, but not prefilled: {exc}"))
                return
        self._post(SessionResumed(record, stats))


    def compact(self) -> None:
        """/compact: summarise the older turns now (the session emits Compacted, which start-up's event
        hook posts); a conversation too short for it, or a failure, is posted as an error line."""
        with self.warmer.foreground() if self.warmer is not None else nullcontext():
            try:
                done = self.session.compact()
            except (CompactionError, SessionStoreError) as exc:
                self._post(ConversationCompacted(None, str(exc)))
                return
        if done is None:
            self._post(ConversationCompacted(None, "nothing to compact yet: the newest turns are always kept "
                                                   "as they are"))


def shown_request(content: str) -> str:
    """A saved request as the user typed it (without the instructions and attachments v4 put first)."""
    return content.split(REQUEST_MARK, 1)[1] if REQUEST_MARK in content else content


def conversation_entries(record: SessionRecord) -> list[tuple[str, str]]:
    """The saved conversation as chat entries, (kind, text): "prompt" for each turn's request, "answer"
    for the model's text, "tool" for each call it made; feedback v4 sent within a turn is left out."""
    starts = set(record.turns)
    entries: list[tuple[str, str]] = []
    for index, message in enumerate(record.messages):
        if message.role == "user" and index in starts:
            entries.append(("prompt", shown_request(message.content)))
        elif message.role == "assistant":
            if message.content.strip():
                entries.append(("answer", message.content))
            for call in message.tool_calls:
                what = " ".join(str(v) for v in call.arguments.values())
                entries.append(("tool", f"{call.name} {what}"[:160]))
    return entries


def resumed_note(record: SessionRecord, reused: int | None, tokens: int | None) -> str:
    """The chat's line for a continued session: which, how long, and what the engine reused."""
    text = f"Continuing session {record.id} ({record.turn_count} turn(s), last saved {record.updated[:16]})"
    if tokens is None:
        return text + "; the backend keeps its own cache."
    return text + f": {reused or 0:,} of {tokens:,} tokens reused" + (
        " from the prefix-state store." if reused else ", none found prefilled (computed again).")
