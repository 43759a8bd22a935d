"""Keeping the model's context warm: the session's system message re-prefilled in the background after
the repository changed, so the next question only pays for itself.

The embedded engine holds one decode state, so the engine is one lock: the background prefill holds
it step by step (`EmbeddedBackend.warm`), and a foreground turn (`foreground()`) first asks it to stop
at its next step, then holds the engine for the whole turn. The new system message is only put in the
session while the engine is held, so a turn never sees the repository change under it; a turn that
starts before the prefill did takes the newest system message itself and prefills it as its prompt.
Backends without a local state (HTTP, replay) just get the new system message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .backends import Backend
from .chat_format import Message
from .session import Session

if TYPE_CHECKING:
    from v4.model.prefix_store import PrefillStats  # the engine's, loaded only to type-check


@dataclass(frozen=True, slots=True)
class WarmReport:
    """One refresh: the system message is in the session; `stats` says how its prefill went (None
    for a backend that keeps no state here)."""

    tags: tuple[object, ...]  # what the callers passed to each `refresh` this one covers, oldest first
    stats: PrefillStats | None
    finished_s: float  # time.monotonic() when it ended


class ContextWarmer:
    """Re-prefills the session's system message in the background; see the module docstring."""

    def __init__(self, session: Session, backend: Backend, on_report: Callable[[WarmReport], None] | None = None,
                 step_tokens: int | None = None) -> None:
        self.session = session
        self.backend = backend  # the engine's own backend (not a metering wrapper): a prefill is no answer
        self.on_report = on_report or (lambda _report: None)
        self.step_tokens = step_tokens
        self._engine = threading.Lock()  # held by a prefill step or by a foreground turn
        self._state = threading.Condition()
        self._pending: tuple[Message, list[object]] | None = None
        self._running = False
        self._superseded = False  # a newer system message waits: the running prefill is stale
        self._waiting = 0  # foreground turns waiting for or holding the engine
        self._closed = False
        self._thread: threading.Thread | None = None

    def refresh(self, system: Message, tag: object = None) -> None:
        """Make `system` the session's system message and prefill it in the background. A refresh
        still waiting is replaced and a running one stops at its next step; the report of this one
        carries their tags too (it covers their changes), and they get none of their own."""
        with self._state:
            if self._closed:
                return
            tags = self._pending[1] if self._pending is not None else []
            self._pending = (system, [*tags, tag])
            self._superseded = self._running
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="v4-warm", daemon=True)
                self._thread.start()
            self._state.notify_all()

    @contextmanager
    def foreground(self) -> Iterator[None]:
        """Hold the engine for a turn: a running refresh stops at its next step (what it prefilled
        stays), a waiting one is applied now (its system message; the turn prefills it)."""
        with self._state:
            self._waiting += 1
        try:
            with self._engine:
                with self._state:
                    pending, self._pending = self._pending, None
                    self._state.notify_all()
                if pending is not None:  # the turn's own prompt prefills it: no report
                    self.session.system = pending[0]
                yield
        finally:
            with self._state:
                self._waiting -= 1

    def idle(self, timeout: float | None = None) -> bool:
        """Wait until no refresh is waiting or running; False if `timeout` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state:
            while self._pending is not None or self._running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._state.wait(left)
        return True

    def close(self, wait: bool = True) -> None:
        """Stop: a running refresh stops at its next step (waited for with `wait`); nothing new starts."""
        with self._state:
            self._closed = True
            self._pending = None
            self._state.notify_all()
        if wait and self._thread is not None:
            self._thread.join(timeout=60)

    def _work(self) -> None:
        while True:
            with self._state:
                while self._pending is None and not self._closed:
                    self._state.wait()
                if self._closed:
                    return
            with self._engine:
                with self._state:
                    if self._pending is None:
                        continue  # a foreground turn took it
                    (system, tags), self._pending = self._pending, None
                    self._running, self._superseded = True, False
                try:
                    self.session.system = system
                    stats = self._prefill(system)
                finally:
                    with self._state:
                        self._running = False
                        superseded = self._superseded and self._pending is not None
                        if superseded:  # the next refresh covers these changes too, and reports them
                            self._pending = (self._pending[0], [*tags, *self._pending[1]])
                        self._state.notify_all()
            if not superseded:
                self.on_report(WarmReport(tuple(tags), stats, time.monotonic()))

    def _prefill(self, system: Message) -> PrefillStats | None:
        warm = getattr(self.backend, "warm", None)
        if warm is None:
            return None
        thinking, tools = self.session.prompt_style()
        return warm([system], self._cancelled, self.step_tokens, thinking=thinking, tools=tools)

    def _cancelled(self) -> bool:
        """Asked by the prefill between steps: a turn waits, a newer refresh waits, or closing."""
        return self._waiting > 0 or self._superseded or self._closed

