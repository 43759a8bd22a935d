"""MainScreen's watch-mode side: turning it on and off, what the watcher reports, and the requests of
AI comments, run one at a time as turns (`watching.py` beside `main.py`, which mixes it in)."""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import TYPE_CHECKING

from v4.agent.watch.ai_comments import AIRequest
from v4.agent.watch.loop import Changed, Warmed

from .. import messages as m
from ..widgets.chat_log import ChatLog

if TYPE_CHECKING:
    from ..controllers.startup import Services


class WatchHandlers:
    """Watch mode's actions and message handlers, mixed into MainScreen (whose state they set)."""

    services: Services | None
    ai_requests: deque[AIRequest]  # from watch mode, run one at a time

    def action_watch(self) -> None:
        """Watch mode on or off: file changes update the index, the context and the engine's state
        as they happen, and AI comments (AI! / AI?) become questions here."""
        if self.services is None:
            self._can_run("watching")
            return
        if self.watching:
            self.services.watch.stop()
            self.watching = False
            self.query_one(ChatLog).note("Watch mode off.", "info")
            return
        self.watching = True
        stop = self.services.watch.start()
        self.run_worker(partial(self.services.watch.run, stop), thread=True, group="watch", exit_on_error=False)

    def on_watch_update(self, event: m.WatchUpdate) -> None:
        chat, update = self.query_one(ChatLog), event.event
        if update is None:
            chat.note(f"Watch mode on ({event.watched_dirs} watch(es)): saved files update the context as they "
                      "change. End a comment with AI! to ask for a change, AI? to ask a question.", "success")
        elif isinstance(update, Changed):
            if update.view is not None:
                self.context = update.view
            self.changed = update.paths
            if self.info is None or self.info.kind != "embedded":  # no re-prefill note follows
                chat.note(f"watch: {update.describe()}", "info")
        elif isinstance(update, Warmed):
            self.changed = ()
            self._set_kv(update.stats.held_tokens if update.stats else 0)
            chat.note(f"watch: {update.describe()}", "info")

    def on_ai_requested(self, event: m.AiRequested) -> None:
        self.ai_requests.append(event.request)
        self._next_request()

    def _next_request(self) -> None:
        """Run the oldest AI request from watch mode, unless a turn is running (it waits its turn)."""
        if not self.ai_requests or self.busy or self.services is None:
            return
        request = self.ai_requests.popleft()
        chat = self.query_one(ChatLog)
        chat.note(f"watch: {request.kind} in {', '.join(request.files)}", "info")
        chat.prompt(request.instruction().rstrip())
        self.busy = True
        self._work(partial(self.services.watch.ask, request, self.services.chat), "turn")

    def on_watch_stopped(self, event: m.WatchStopped) -> None:
        self.watching = False
        if event.error:
            self.query_one(ChatLog).note(f"Watch mode stopped: {event.error}", "error")
