"""ApprovalController: the TUI's side of the agent's approval point (`agent/approval.py`).

The session's `AskUser` policy calls `ask` from the turn's worker thread. `ask` posts an
ApprovalRequested carrying a `Future` (as Toad's permission requests do) and blocks until the
screen resolves it with the user's answer. Whatever happens, the worker never hangs: a stop denies
every open question and any the turn asks after it, and closing the app denies them all for good.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

from textual.message import Message

from v4.agent.approval import Answer

from ..messages import ApprovalRequested

MAX_PREFIX_CHARS = 40  # a longer prefix is cut in the button's label (the details show it whole)


class ApprovalController:
    """Puts the model's commands to the user, one Future per question."""

    def __init__(self, *, post_message: Callable[[Message], object]) -> None:
        self._post = post_message
        self._lock = threading.Lock()
        self._open: list[ApprovalRequested] = []
        self._stopped = False  # this turn was stopped: deny without asking
        self._closed = False  # the app is closing: deny without asking, from now on

    def ask(self, command: str, prefix: tuple[str, ...]) -> Answer:
        """The user's answer to "may `command` run?" (blocks: call from a worker thread, never the loop)."""
        request = ApprovalRequested(command, tuple(prefix), Future())
        with self._lock:
            if self._stopped or self._closed:
                return Answer.DENY
            self._open.append(request)
        try:
            if self._post(request) is False:  # the screen is gone: nobody can answer
                return Answer.DENY
            return request.future.result()
        finally:
            with self._lock:
                self._open.remove(request)

    def begin_turn(self) -> None:
        """A new instruction: its commands are asked again (a stop held for the last turn only)."""
        with self._lock:
            self._stopped = False

    def stop(self) -> None:
        """The user stopped the answer: open questions are denied, and so is any later one this turn."""
        with self._lock:
            self._stopped = True
        self._deny_open()

    def close(self) -> None:
        """The app is closing: deny every question, open or to come."""
        with self._lock:
            self._closed = True
        self._deny_open()

    def _deny_open(self) -> None:
        with self._lock:
            requests = list(self._open)
        for request in requests:
            request.resolve(Answer.DENY)


def approval_question(command: str, prefix: tuple[str, ...]) -> tuple[str, str]:
    """The approval window's question and details: the command in full, and what "always" allows."""
    if prefix:
        scope = (f"2 allows every command that starts with `{' '.join(prefix)}` until v4 quits. "
                 "Deny tells the model the command was not allowed.")
    else:
        scope = ("It cannot be allowed by prefix (several commands, or shell syntax v4 does not check "
                 "word by word): run it once or deny it.")
    return "The model wants to run a command", f"$ {command}\n\n{scope}"


def always_label(prefix: tuple[str, ...]) -> str:
    """The "always" answer's label, the prefix cut to fit a button."""
    words = " ".join(prefix)
    if len(words) > MAX_PREFIX_CHARS:
        words = words[:MAX_PREFIX_CHARS - 1] + "…"
    return f"Always for `{words}` this session"
