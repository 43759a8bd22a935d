"""ContextController: /add and /drop, /think's prefill, and which files changed since the context was cached."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import nullcontext

from textual.message import Message

from v4.agent.backends import Backend
from v4.agent.bootstrap import prefill_session
from v4.agent.context import ContextError, RepositoryContext
from v4.agent.prompts import system_message
from v4.agent.session import Session
from v4.agent.warm import ContextWarmer

from ..messages import ContextUpdated


class ContextController:
    """Re-plans the repository's context when the user forces files in or out, rebuilds the session's
    system message from it and prefills it again (only the changed tail is computed). Blocking: call
    from thread workers, never while a turn runs (they share the engine's state)."""

    def __init__(self, *, context: RepositoryContext, session: Session, backend: Backend, budget: int,
                 post_message: Callable[[Message], object], warmer: ContextWarmer | None = None) -> None:
        self.context = context
        self.session = session
        self.backend = backend  # the unmetered backend: a prefill is not an answer
        self.budget = budget
        self.warmer = warmer  # a background re-prefill (watch mode) gives the engine up for ours
        self._post = post_message
        self.lock = threading.Lock()  # plan() rewrites what changed_files() reads; watch mode shares it

    def add(self, path: str) -> None:
        self._force(self.context.add, path, "added {} to the context in full")

    def drop(self, path: str) -> None:
        self._force(self.context.drop, path, "dropped {} from the context")

    def check_changes(self) -> None:
        """Post the files changed since the plan was made (cheap: a stat per file, a hash if it moved)."""
        with self.lock:
            changed = tuple(self.context.changed_files())
        self._post(ContextUpdated(None, changed))

    def paths(self) -> list[str]:
        return self.context.paths()

    def _force(self, change: Callable[[str], str], path: str, note: str) -> None:
        with self.lock:
            try:
                rel = change(path)
            except ContextError as exc:
                changed = tuple(self.context.changed_files())
                self._post(ContextUpdated(None, changed, str(exc), error=True, finished=True))
                return
            view = self.context.plan(self.budget)
            with self.warmer.foreground() if self.warmer is not None else nullcontext():
                self.session.system = system_message(self.context.repository_text(), self.session.instructions)
                report = prefill_session(self.backend, self.session)
        text = note.format(rel) + f": {view.total_tokens:,} of {view.budget:,} tokens"
        if report is not None:
            text += f"; prefilled {report.computed_tokens:,} tokens ({report.reused_tokens:,} reused)"
        self._post(ContextUpdated(view, (), text + ".", finished=True))

    def set_thinking(self, thinking: bool, effort: str | None) -> None:
        """/think: the session thinks (or not) from its next turn, at `effort`. The system message is
        prefilled again as the turns will render it now (the effort and the tools may change how), so
        the next answer does not pay for it; an unchanged rendering is found held and costs nothing."""
        with self.lock:
            with self.warmer.foreground() if self.warmer is not None else nullcontext():
                self.session.options.thinking, self.session.options.effort = thinking, effort
                report = prefill_session(self.backend, self.session)
            changed = tuple(self.context.changed_files())
        note = None if report is None else (f"Prefilled the context for it: {report.computed_tokens:,} tokens "
                                            f"computed, {report.reused_tokens:,} reused.")
        self._post(ContextUpdated(None, changed, note, finished=True))
