"""The embedded backend: the V4 engine in this process, as a thin adapter. The checkpoint's chat format
turns messages into token ids (and the segment boundaries where the prefix-state store snapshots);
the engine's runner (`model/runner.py`) keeps the one decode state, rewinds it to the longest prompt
prefix already fed, prefills and decodes. So the system prompt and the repository are prefilled once
per session and each turn only pays for what is new.

The engine is imported only when a backend is made: an agent on an endpoint never loads torch.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from ..chat_format import ChatFormat, Message
from .protocol import (BackendError, Event, ReasoningDelta, TextDelta, Thinking, Tool, ToolCallError, Usage,
                       answer_text)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from v4.model.engine import Engine
    from v4.model.prefix_store import PrefillStats, PrefixStore


class EmbeddedBackend:
    """The V4 engine in this process. Prompts are rendered with the checkpoint's chat format and fed
    to one runner, whose decode state is rewound, never rebuilt, while prompts share a prefix."""

    name = "embedded"

    def __init__(self, engine: Engine, chat_format: ChatFormat, context_length: int | None = None,
                 store: PrefixStore | None = None, static_decode: bool | None = None) -> None:
        from v4.model.runner import Runner, RunnerError

        try:
            self.runner: Runner = Runner(engine, context_length, store, static_decode, chat_format.stop_strings)
        except RunnerError as exc:
            raise BackendError(str(exc)) from exc
        self.chat_format = chat_format

    @property
    def engine(self) -> Engine:
        return self.runner.engine

    @property
    def tokenizer(self) -> Tokenizer:
        return self.runner.tokenizer

    @property
    def context_length(self) -> int:
        """Tokens the state holds (prompt + answer): the caller's limit, within the model's."""
        return self.runner.context_length

    @property
    def store(self) -> PrefixStore | None:
        return self.runner.store

    @property
    def last_usage(self) -> Usage:
        """The last answer's tokens (the prompt's as soon as it is prefilled, the answer's at its end)."""
        answer = self.runner.last_answer
        return Usage(answer.prompt_tokens, answer.cached_tokens, answer.completion_tokens, answer.seconds)

    @property
    def last_prefill(self) -> PrefillStats | None:
        """How the last prefill through the prefix-state store went (a cold start); None until one did."""
        return self.runner.last_prefill

    @last_prefill.setter
    def last_prefill(self, stats: PrefillStats | None) -> None:
        self.runner.last_prefill = stats

    def offload_report(self) -> dict[str, object] | None:
        """Where the engine's weights live and its expert caches' hit rate; None without offload."""
        return self.engine.offload_report()

    def count_tokens(self, text: str) -> int | None:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def encode(self, messages: Sequence[Message], *, thinking: Thinking | None = None,
               tools: Sequence[Tool] = ()) -> list[int]:
        """The prompt's ids, ending with the assistant's turn."""
        return self.encode_with_boundaries(messages, thinking=thinking, tools=tools)[0]

    def _render(self, messages: Sequence[Message], add_generation_prompt: bool, thinking: Thinking | None,
                tools: Sequence[Tool]) -> str:
        return self.chat_format.render(messages, add_generation_prompt=add_generation_prompt,
                                       thinking=thinking is not None and thinking.enabled, tools=list(tools) or None,
                                       effort=thinking.effort if thinking is not None else None)

    def encode_with_boundaries(self, messages: Sequence[Message], add_generation_prompt: bool = True, *,
                               thinking: Thinking | None = None, tools: Sequence[Tool] = ()
                               ) -> tuple[list[int], list[int]]:
        """The prompt's ids and the token positions where its parts start: each repository segment
        (`==> path <==` headers) and the end of the system message. The prefix-state store snapshots
        there, so an edit to one file recomputes only from that file's segment on. Thinking and tools
        are part of the prompt (the tools follow the system text), so a prefill must name the same."""
        ids, boundaries, _, _ = self._encode(messages, add_generation_prompt, thinking, tools)
        return ids, boundaries

    def _encode(self, messages: Sequence[Message], add_generation_prompt: bool, thinking: Thinking | None,
                tools: Sequence[Tool]) -> tuple[list[int], list[int], str, list[int]]:
        """(ids, boundaries, the rendered text, each token's start offset in it)."""
        text = self._render(messages, add_generation_prompt, thinking, tools)
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        system_end = len(text)  # repository segments are marked in the system message only (not attachments)
        if messages and messages[0].role == "system" and len(messages) > 1:
            system_end = len(self._render(messages[:1], False, thinking, tools))
        marks = [m.start() for m in re.finditer(r"(?m)^==> ", text[:system_end])]
        if system_end < len(text):
            marks.append(system_end)
        starts = [start for start, _ in encoding.offsets]
        boundaries = sorted({bisect.bisect_left(starts, mark) for mark in marks} - {0, len(encoding.ids)})
        return encoding.ids, boundaries, text, starts

    def prefill(self, messages: Sequence[Message], *, thinking: Thinking | None = None,
                tools: Sequence[Tool] = ()) -> PrefillStats:
        """Feed `messages` (no answer) now, so the first question only pays for itself; resumes from the
        store when it holds a prefix. `seconds` counts the rendering and tokenizing too."""
        started = time.perf_counter()
        return self._prefill(*self.encode_with_boundaries(messages, False, thinking=thinking, tools=tools), started)

    def _prefill(self, ids: list[int], boundaries: list[int], started: float) -> PrefillStats:
        """Bring the state to `ids` (from the store when it is cold); `seconds` counted from `started`."""
        from v4.model.runner import RunnerError

        from v4.model.parallel_protocol import ParallelError

        try:
            self.runner.room_after(ids)
            _, stats = self.runner.prefill(ids, boundaries)
        except (RunnerError, ParallelError) as exc:
            raise BackendError(str(exc)) from exc
        return dataclasses.replace(stats, seconds=time.perf_counter() - started)

    def conversation_ids(self, messages: Sequence[Message], *, thinking: Thinking | None = None,
                         tools: Sequence[Tool] = ()) -> tuple[list[int], list[int]]:
        """The ids every next prompt of the conversation `messages` starts with, and their boundaries:
        the prompt for one more user message, cut where that message's text would begin. (The same
        messages rendered without a next turn are not a prefix of it: thinking mode drops the last
        answer's reasoning once a user message follows.)"""
        sentinel = "\x00v4-next-request\x00"
        ids, boundaries, text, starts = self._encode([*messages, Message("user", sentinel)], True, thinking, tools)
        end = bisect.bisect_left(starts, text.index(sentinel))
        return ids[:end], [b for b in boundaries if b < end]

    def keep_conversation(self, messages: Sequence[Message], *, thinking: Thinking | None = None,
                          tools: Sequence[Tool] = ()) -> PrefillStats | None:
        """After a turn: bring the state to the conversation so far (`conversation_ids`: the answer as
        the next prompt renders it, which the next turn would feed anyway) and snapshot it in the
        prefix-state store, so a session resumed tomorrow loads it instead of prefilling it. None
        without a store."""
        from v4.model.runner import RunnerError

        if self.store is None:
            return None
        ids, boundaries = self.conversation_ids(messages, thinking=thinking, tools=tools)
        try:
            return self.runner.keep(ids, boundaries)
        except RunnerError as exc:
            raise BackendError(str(exc)) from exc

    def resume(self, messages: Sequence[Message], *, thinking: Thinking | None = None,
               tools: Sequence[Tool] = ()) -> PrefillStats:
        """Prefill a saved conversation (system message and turns) so its next question pays only for
        itself: from the prefix-state store, where the session that saved it snapshotted it."""
        started = time.perf_counter()
        return self._prefill(*self.conversation_ids(messages, thinking=thinking, tools=tools), started)

    def warm(self, messages: Sequence[Message], cancelled: Callable[[], bool] | None = None,
             step_tokens: int | None = None, *, thinking: Thinking | None = None,
             tools: Sequence[Tool] = ()) -> PrefillStats:
        """Prefill `messages` (no answer) in steps, asking `cancelled` before each (`Runner.warm`): a
        question arriving meanwhile waits one step at most. `seconds` counts the tokenizing too."""
        started = time.perf_counter()
        ids, boundaries = self.encode_with_boundaries(messages, False, thinking=thinking, tools=tools)
        stats = self.runner.warm(ids, boundaries, cancelled, step_tokens)
        return dataclasses.replace(stats, seconds=time.perf_counter() - started)

    def stream(self, messages: Sequence[Message], max_tokens: int, temperature: float = 0.0) -> Iterator[str]:
        """The answer's text only (chat mode, no tools)."""
        return answer_text(self.events(messages, max_tokens, temperature))

    def events(self, messages: Sequence[Message], max_tokens: int, temperature: float = 0.0, *,
               thinking: Thinking | None = None, tools: Sequence[Tool] = ()) -> Iterator[Event]:
        """The turn, split as it streams by DeepSeek's encoding (`completion.py`): thinking, the answer,
        and the DSML tool calls parsed once the completion ends."""
        from ..completion import CompletionSplitter

        ids, boundaries = self.encode_with_boundaries(messages, thinking=thinking, tools=tools)
        splitter = CompletionSplitter(thinking=thinking is not None and thinking.enabled)
        for piece in self.stream_ids(ids, max_tokens, temperature, boundaries=boundaries):
            yield from _events(splitter.feed(piece))
        yield from _events(splitter.finish())
        completion = splitter.result()
        if completion.tool_error:
            yield ToolCallError(completion.feedback() or completion.tool_error)
        yield from completion.tool_calls

    def stream_ids(self, ids: list[int], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                   seed: int = 0, boundaries: Sequence[int] = ()) -> Iterator[str]:
        """The text generated after prompt `ids` (a raw completion; `stream` renders a chat first)."""
        from v4.model.parallel_protocol import ParallelError
        from v4.model.runner import RunnerError

        try:
            yield from self.runner.generate(ids, max_tokens, temperature, top_p, seed, boundaries)
        except (RunnerError, ParallelError) as exc:  # ParallelError: a worker of a --parallel engine died
            raise BackendError(str(exc)) from exc


def _events(chunks: Sequence[tuple[str, str]]) -> Iterator[Event]:
    for kind, text in chunks:
        if text:
            yield ReasoningDelta(text) if kind == "reasoning" else TextDelta(text)
