"""MeteredBackend: the session's backend, wrapped so the UI sees each answer as it streams.

The session calls `events` once per answer (the first, then one per reflection, test round or tool
results sent back), so the wrapper is where the UI learns that a reflection was sent, gets the
thinking and the text as they stream, times the first token and the generation rate, and where a
stop request interrupts generation between pieces.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

from textual.message import Message

from v4.agent.backends import (Backend, BackendError, Event, ReasoningDelta, TextDelta, Thinking, Tool, Usage,
                               answer_text)
from v4.agent.chat_format import Message as ChatMessage

from ..messages import AnswerDelta, AnswerMetrics, AnswerStarted, ThinkingDelta

STOPPED = "stopped by the user"


class MeteredBackend:
    """A Backend that reports every attempt, piece and timing through `post_message`."""

    def __init__(self, inner: Backend, *, post_message: Callable[[Message], object],
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.inner = inner
        self.name = inner.name
        self.context_length = inner.context_length
        self._post = post_message
        self._clock = clock
        self._attempt = 0
        self._stop = threading.Event()

    @property
    def last_usage(self) -> Usage:
        return self.inner.last_usage

    def count_tokens(self, text: str) -> int | None:
        return self.inner.count_tokens(text)

    def keep_conversation(self, messages: Sequence[ChatMessage], *, thinking: Thinking | None = None,
                          tools: Sequence[Tool] = ()) -> object:
        """The inner backend's (the embedded engine snapshots the conversation after a turn); not an answer."""
        keep = getattr(self.inner, "keep_conversation", None)
        return keep(messages, thinking=thinking, tools=tools) if keep is not None else None

    def begin_turn(self) -> None:
        """A new instruction: the next `stream` is its first attempt."""
        self._attempt = 0
        self._stop.clear()

    def stop(self) -> None:
        """Stop the answer being generated (from any thread); the turn ends with STOPPED."""
        self._stop.set()

    def stream(self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float = 0.0) -> Iterator[str]:
        return answer_text(self.events(messages, max_tokens, temperature))

    def events(self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float = 0.0, *,
               thinking: Thinking | None = None, tools: Sequence[Tool] = ()) -> Iterator[Event]:
        attempt, self._attempt = self._attempt, self._attempt + 1
        last = messages[-1]  # after tool calls it is their results: no reflection to show
        self._post(AnswerStarted(attempt, last.content if attempt and last.role == "user" else None))
        started, first = self._clock(), None
        try:
            for event in self.inner.events(messages, max_tokens, temperature, thinking=thinking, tools=tools):
                if self._stop.is_set():
                    raise BackendError(STOPPED)
                if first is None:
                    first = self._clock()
                if isinstance(event, TextDelta):
                    self._post(AnswerDelta(event.text))
                elif isinstance(event, ReasoningDelta):
                    self._post(ThinkingDelta(event.text))
                yield event
        finally:  # a stopped answer still has a time to first token
            self._report(started, first)

    def _report(self, started: float, first: float | None) -> None:
        ended = self._clock()
        usage = self.inner.last_usage
        rate = None
        if first is not None and ended - first > 1e-3 and usage.completion_tokens > 1:
            rate = (usage.completion_tokens - 1) / (ended - first)  # tokens after the first, over their time
        offload = getattr(self.inner, "offload_report", None)  # the embedded engine's, if it offloads
        self._post(AnswerMetrics(None if first is None else first - started, rate,
                                 usage.prompt_tokens + usage.completion_tokens, offload() if offload else None))
