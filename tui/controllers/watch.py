"""WatchController: the TUI's watch mode, over the agent's watcher and watch loop.

While on, `run` (a thread worker) takes each batch of file changes, puts it in the index, the context
panel and (in the background) the engine's state, and posts what happened (WatchUpdate) and the AI
comments that ask for a run (AiRequested). The screen runs those through the chat like a question,
one at a time, so their edits arrive for review like any other answer's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from textual.message import Message

from v4.agent.watch.ai_comments import AIRequest
from v4.agent.context import RepositoryContext
from v4.agent.session import Session
from v4.agent.turn import TurnResult
from v4.agent.warm import ContextWarmer
from v4.agent.watch.watcher import WatchConfig, Watcher
from v4.agent.watch.loop import WatchLoop

from ..messages import AiRequested, WatchStopped, WatchUpdate
from .chat import ChatController

POLL_S = 0.2  # how often the worker looks up from waiting for changes to check for `stop`


class WatchController:
    """Starts and stops watching `root`; see the module docstring."""

    def __init__(self, *, root: Path, context: RepositoryContext, session: Session, warmer: ContextWarmer,
                 budget: int, lock: threading.Lock, post_message: Callable[[Message], object],
                 config: WatchConfig = WatchConfig()) -> None:
        self.root = root
        self.config = config
        self._post = post_message
        self.loop = WatchLoop(context=context, session=session, warmer=warmer, budget=budget,
                              emit=lambda event: post_message(WatchUpdate(event)), lock=lock)
        warmer.on_report = self.loop.on_warmed
        self._stop = threading.Event()
        self._stop.set()

    @property
    def active(self) -> bool:
        return not self._stop.is_set()

    def start(self) -> threading.Event:
        """Mark watching as on; returns the event that stops this run, for `run` (in a worker). A
        run still ending from before keeps its own event, so it cannot outlive its `stop()`."""
        self._stop = threading.Event()
        return self._stop

    def run(self, stop: threading.Event) -> None:
        """Watch until `stop` is set: blocking, for a thread worker. Posts WatchStopped when it ends,
        unless a newer run has started meanwhile."""
        error = None
        try:
            with Watcher(self.root, self.config) as watcher:
                self._post(WatchUpdate(None, len(watcher.watched)))
                while not stop.is_set():
                    batch = watcher.next_batch(POLL_S)
                    if batch is None:
                        continue
                    request = self.loop.apply(batch)
                    if request is not None:
                        self._post(AiRequested(request))
        except OSError as exc:  # e.g. the system's limit of watches is reached
            error = f"{type(exc).__name__}: {exc}"
        finally:
            stop.set()
        if stop is self._stop:
            self._post(WatchStopped(error))

    def stop(self) -> None:
        """Stop watching (the worker ends within POLL_S, or after the batch it is applying)."""
        self._stop.set()

    def ask(self, request: AIRequest, chat: ChatController) -> TurnResult:
        """Run `request` through the chat (blocking: the turn worker): its files go into the context in
        full, the user's uncommitted edits in them stay, and a question edits nothing."""
        self.loop.include_in_full(request)
        return chat.ask(request.instruction(), user_edited=request.files, answer_only=request.action == "?")
